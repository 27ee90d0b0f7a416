"""Everything a worker writes lands in its log file: Python, C-level fds, crashes; rotation
keeps ``backups`` files and never tears or drops a line."""

import re
from pathlib import Path

import pytest
from conftest import MasterFactory, accounts_of, make_config
from harness import metric, wait_until


@pytest.mark.timeout(60)
def test_every_kind_of_output_and_a_segfault_land_in_the_log(start_master: MasterFactory) -> None:
    master = start_master(
        make_config(
            workers=1, accounts=accounts_of("testplatforms.behaviours:WriteEverywhere", crash=True)
        )
    )
    pid = master.wait_running("worker1")

    exited = master.log.wait_for(event="worker exited", worker="worker1")
    assert exited["pid"] == pid
    assert (exited["signal"], exited["reason"]) == ("SIGSEGV", "crashed")

    text = master.worker_log("worker1").read_text()
    for expected in [
        "raw write to fd 2",
        "raw write to fd 1",
        "plain print to stdout",
        "print to stderr",
        "bytes to stdout.buffer",
        "red text without colour codes",
        "stdlib logging warning",
        "structlog line",
        "Fatal Python error: Segmentation fault",
        "behaviours.py",
    ]:
        assert expected in text, f"{expected!r} missing from the worker log"
    assert "\x1b[" not in text, "colour codes in the log file"
    # The master's exit line carries the end of the log: the crash dump.
    assert any(
        "Segmentation fault" in line or "behaviours.py" in line for line in exited["log_tail"]
    )
    master.wait_running("worker1", after=master.log.events.index(exited))
    with master.http() as http:
        worker = http.get("/workers/worker1").json()
        metrics = http.get("/metrics").text
    assert worker["restarts_by_reason"]["crashed"] >= 1
    assert (worker["last_exit"]["signal"], worker["last_exit"]["reason"]) == ("SIGSEGV", "crashed")
    assert metric(metrics, 'hiscrm_worker_restarts_total{reason="crashed",worker="worker1"}') >= 1
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_uncaught_exception_in_a_thread_is_logged_and_reported(start_master: MasterFactory) -> None:
    config = make_config(
        workers=1,
        accounts=[
            {
                "id": "acc-1",
                "platform": "testplatforms.behaviours:RaiseSoon",
                "options": {"thread": True, "after_s": 0.2},
            }
        ],
    )
    master = start_master(config)
    master.wait_running("worker1")
    thread_error = master.log.wait_for(
        event="worker error", worker="worker1", where=lambda e: e["source"].startswith("thread:")
    )
    assert "KeyError" in thread_error["error"]
    assert "_raise_in_thread" in thread_error["traceback"]
    text = master.worker_log("worker1").read_text()
    assert "raised in a helper thread" in text
    assert master.stop() == 0


LINE = re.compile(r"^LINE (t\d) (\d{7}) x+ END$")


@pytest.mark.timeout(90)
def test_rotation_keeps_backups_and_never_tears_or_drops_a_line(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    lines_per_thread = 20_000
    done = tmp_path / "spam-done"
    config = make_config(
        workers=1,
        accounts=accounts_of(
            "testplatforms.behaviours:SpamLines", lines=lines_per_thread, done_file=str(done)
        ),
        logs={"max_bytes": 200_000, "backups": 3},
    )
    master = start_master(config)
    master.wait_running("worker1")
    wait_until(done.exists, 60, "the platform finished writing")
    assert master.stop() == 0

    logs = master.state_dir / "logs"
    files = sorted(logs.glob("worker1.log*"))
    names = {f.name for f in files}
    assert names == {"worker1.log", "worker1.log.1", "worker1.log.2", "worker1.log.3"}, names
    for f in files:
        assert f.stat().st_size < 200_000 + 4096, f"{f.name} grew far past max_bytes"

    last_seen: dict[str, int] = {}
    spam_lines = 0
    # Oldest first: .3, .2, .1, then the live file.
    for f in [
        logs / "worker1.log.3",
        logs / "worker1.log.2",
        logs / "worker1.log.1",
        logs / "worker1.log",
    ]:
        for line in f.read_text().splitlines():
            if not line.startswith("LINE"):
                continue
            match = LINE.match(line)
            assert match, f"torn line in {f.name}: {line[:120]!r}"
            thread, number = match.group(1), int(match.group(2))
            if thread in last_seen:
                assert number == last_seen[thread] + 1, (
                    f"{thread}: line {last_seen[thread] + 1} lost"
                )
            last_seen[thread] = number
            spam_lines += 1
    # Everything newer than the oldest kept line is kept: each thread seen in the window
    # runs contiguously (checked above) up to its very last line.
    assert last_seen, "no spam lines kept at all"
    assert all(n == lines_per_thread - 1 for n in last_seen.values()), last_seen
    assert spam_lines > 3 * 200_000 // 100  # several files' worth of lines were kept


@pytest.mark.timeout(60)
def test_a_rotation_without_a_free_fd_keeps_the_log_and_every_line(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    config = make_config(
        workers=1,
        accounts=accounts_of(
            "testplatforms.behaviours:StarveFds", lines=800, done_file=str(done), starve_s=1.0
        ),
        # 800 lines of 95 bytes fill 64 KiB; master.log (which a test reads as it grows,
        # unaware of rotation) stays below it.
        logs={"max_bytes": 65536, "backups": 10},
    )
    master = start_master(config)
    master.wait_running("worker1")
    log = master.worker_log("worker1")
    failed = master.log.wait_for(event="worker error", source="logfile rotation", timeout=20)
    assert "Too many open files" in failed["error"]
    assert log.exists()  # the live name stays while rotations fail
    wait_until(done.exists, 20, "the platform wrote everything")
    wait_until(lambda: log.with_name("worker1.log.1").exists(), 10, "rotated once fds were back")
    assert master.stop() == 0

    files = [log.with_name(f"worker1.log.{n}") for n in range(10, 0, -1)] + [log]
    text = [line for f in files if f.exists() for line in f.read_text().splitlines()]
    starved = [line for line in text if line.startswith("starved ")]
    fed = [line for line in text if line.startswith("fed ")]
    assert starved == [f"starved {n:05d} " + "." * 80 for n in range(800)]  # once, in order
    assert fed == [f"fed {n:05d} " + "." * 80 for n in range(800)]
    # Reported once for the whole run of failed rotations (one per line), never as lost lines.
    assert len(master.log.find(event="worker error", source="logfile rotation")) == 1
    assert not master.log.find(event="worker cannot write its log file (disk full?)")
    assert not master.log.find(event="worker exited", reason="crashed")
