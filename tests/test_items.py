"""Item models: times are integer milliseconds, and anything else is refused clearly."""

import pytest
from pydantic import ValidationError

from hiscrm.items import ITEM_MODELS, Comment, Message


def comment(created_at: object) -> dict[str, object]:
    return {
        "id": "c1",
        "content_id": "p1",
        "author_id": "a",
        "text": "nice",
        "created_at": created_at,
    }


def test_a_time_in_seconds_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(ValidationError) as info:
        Comment.model_validate(comment(1_763_848_020))
    message = str(info.value)
    assert "created_at" in message
    assert (
        "1763848020 looks like seconds since the epoch; times are integer milliseconds" in message
    )
    assert "did you mean 1763848020000" in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1_763_848_020_000_000, "looks like microseconds"),
        (1_763_848_020.5, "valid integer"),
        ("1763848020000", "valid integer"),
        (True, "valid integer"),
    ],
)
def test_other_wrong_times_are_rejected(value: object, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Comment.model_validate(comment(value))


def test_milliseconds_pass_and_unknown_fields_do_not() -> None:
    assert Comment.model_validate(comment(1_763_848_020_123)).created_at == 1_763_848_020_123
    with pytest.raises(ValidationError, match="Extra inputs"):
        Message.model_validate(
            {
                "id": "m",
                "conversation_id": "c",
                "direction": "inbound",
                "sender_id": "u",
                "text": "x",
                "sent_at": 1_763_848_020_123,
                "seen": True,
            }
        )


def test_every_kind_is_tagged_with_its_name() -> None:
    for kind, model in ITEM_MODELS.items():
        assert model.model_fields["kind"].default == kind
