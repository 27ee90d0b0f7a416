"""Digests of big accounts go out in frames under the limit, whatever their ids hold."""

from hiscrm.channel import MAX_FRAME_BYTES
from hiscrm.master.data.accounts import digest_chunks
from hiscrm.protocol import Encoder, MasterAccountDigest


def test_non_ascii_and_control_characters_still_fit() -> None:
    entries = [
        ("message", f"消息-{n:06d}-\x01\x02" + "é" * 40, 3, "0123456789abcdef")
        for n in range(20_000)
    ]
    chunks = digest_chunks(entries)
    assert sum(len(c) for c in chunks) == len(entries)
    assert len(chunks) > 1
    encoder = Encoder()
    for chunk in chunks:
        assert (
            len(encoder.encode(MasterAccountDigest(account_id="acc", entries=chunk)))
            <= MAX_FRAME_BYTES
        )
