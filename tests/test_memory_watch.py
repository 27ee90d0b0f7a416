"""The memory watch's decisions (pure), and one pass over real process trees."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import structlog

from hiscrm.config import ConfigError, load_config
from hiscrm.master.supervision.exit_record import describe_exit
from hiscrm.master.supervision.memory_watch import (
    CHECK_INTERVAL_S,
    PSS_MIN_READS_PER_PASS,
    PSS_REFRESH_S,
    SHOWN_ONLY_INTERVAL_S,
    MemoryKind,
    MemoryMeasured,
    MemoryWatch,
    PssReading,
    Target,
    TreeFigures,
    measure,
    over_limit,
    pss_budget,
    pss_needed,
    slot_limit_bytes,
)
from hiscrm.master.supervision.stop_plan import StopReason
from hiscrm.models import AccountSpec

MiB = 2**20


def tree(
    rss_mb: float, pss_mb: float | None, *, at: float = 10.0, pss_at: float = 10.0
) -> TreeFigures:
    pss = None
    if pss_mb is not None:
        pss = PssReading(int(pss_mb * MiB), pss_at, int(rss_mb * MiB), MemoryKind.PSS)
    return TreeFigures(pid=100, processes=2, rss_bytes=int(rss_mb * MiB), at=at, pss=pss)


def test_a_tree_over_its_limit_in_pss_is_restarted_and_one_over_only_in_rss_is_not() -> None:
    figures = {
        "worker1": tree(rss_mb=300, pss_mb=200),  # over in PSS too
        "worker2": tree(rss_mb=300, pss_mb=90),  # RSS counts the template's pages in full
        "worker3": tree(rss_mb=80, pss_mb=None),  # RSS within: PSS not read, within for sure
        "worker4": tree(rss_mb=150, pss_mb=None),  # no limit
    }
    limits = {"worker1": 100 * MiB, "worker2": 100 * MiB, "worker3": 100 * MiB, "worker4": None}
    over = over_limit(figures, limits)
    assert [o.worker_id for o in over] == ["worker1"]
    assert over[0].limit_bytes == 100 * MiB
    fields = over[0].fields()
    assert fields["tree_memory_mb"] == 200.0
    assert fields["max_memory_mb"] == 100.0
    assert fields["kind"] == "pss"


def test_the_limit_is_exceeded_only_above_it_and_a_stale_pss_is_not_judged() -> None:
    limit = {"w": 100 * MiB}
    assert over_limit({"w": tree(rss_mb=120, pss_mb=100)}, limit) == []  # at it: within
    assert over_limit({"w": tree(rss_mb=120, pss_mb=100.01)}, limit) != []
    # A PSS from an earlier pass is only shown; the judgement is this pass's RSS (within).
    assert over_limit({"w": tree(rss_mb=90, pss_mb=150, at=20.0, pss_at=10.0)}, limit) == []


def test_pss_is_read_when_rss_is_over_the_limit_or_the_figure_shown_is_old_or_off() -> None:
    reading = PssReading(40 * MiB, 100.0, 60 * MiB, MemoryKind.PSS)
    now = 101.0
    assert pss_needed(60 * MiB, None, None, now)  # never read
    assert not pss_needed(60 * MiB, None, reading, now)  # fresh, RSS unchanged
    assert not pss_needed(60 * MiB, 100 * MiB, reading, now)
    assert pss_needed(101 * MiB, 100 * MiB, reading, now)  # over in RSS: only PSS can tell
    assert pss_needed(60 * MiB, None, reading, 100.0 + PSS_REFRESH_S)  # old
    assert pss_needed(70 * MiB, None, reading, now)  # RSS moved by more than 10 % (8 MB)
    assert not pss_needed(64 * MiB, None, reading, now)


def test_a_memory_limit_restart_is_evidence_against_the_account_and_counts_as_a_failure() -> None:
    record = describe_exit(
        0,
        requested=StopReason.MEMORY_LIMIT,
        during_start=False,
        uptime_s=12.0,
        at_ms=1,
        log_tail=[],
    )
    assert record.reason == "memory_limit"
    assert record.is_failure  # backoff applies
    assert record.may_be_an_accounts_doing  # quarantine evidence
    assert not StopReason.MEMORY_LIMIT.by_operator


def test_max_memory_mb_has_a_finite_range(tmp_path: Path) -> None:
    for value in ("16", "1048576"):
        path = tmp_path / f"ok{value}.toml"
        path.write_text(f"[supervision]\nmax_memory_mb = {value}\n")
        assert load_config(path).supervision.max_memory_mb == int(value)
    for value in ("15", "1048577", "0", "-1", '"lots"', "100.5", "nan"):
        path = tmp_path / "bad.toml"
        path.write_text(f"[supervision]\nmax_memory_mb = {value}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert "max_memory_mb" in str(caught.value), value
    assert load_config(None).supervision.max_memory_mb is None  # the default: no limit


def test_a_slot_takes_its_accounts_own_limit_before_the_workers() -> None:
    # (own limit of the account the slot runs alone, [supervision] max_memory_mb)
    assert slot_limit_bytes(50, 200) == 50 * MiB  # lower than the workers'
    assert slot_limit_bytes(500, 200) == 500 * MiB  # or higher: an account known to need it
    assert slot_limit_bytes(50, None) == 50 * MiB  # a limit with none for the workers
    assert slot_limit_bytes(None, 200) == 200 * MiB  # a shared worker, or none of its own
    assert slot_limit_bytes(None, None) is None


def test_an_accounts_max_memory_mb_has_the_same_range_as_the_workers(tmp_path: Path) -> None:
    for value in ("16", "1048576"):
        path = tmp_path / f"ok{value}.toml"
        path.write_text(f'[[accounts]]\nid = "a"\nmax_memory_mb = {value}\n')
        assert load_config(path).accounts[0].max_memory_mb == int(value)
    for value in ("15", "1048577", "0", "-1", '"lots"', "100.5", "nan"):
        path = tmp_path / "bad.toml"
        path.write_text(f'[[accounts]]\nid = "a"\nmax_memory_mb = {value}\n')
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert "max_memory_mb" in str(caught.value), value
    assert AccountSpec(id="a").max_memory_mb is None  # the default: the workers' limit


@pytest.fixture
def parent_with_child() -> Iterator[tuple[int, int]]:
    """A process that starts a child holding 40 MB, both sleeping; (parent, child)."""
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        '\'import time; b = bytearray(40 * 2**20); b[::4096] = b"x" * (len(b) // 4096); '
        "print(flush=True); time.sleep(60)'], stdout=sys.stdout)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        parent.stdout.readline()  # the child has touched its 40 MB
        (child,) = psutil.Process(parent.pid).children()
        yield parent.pid, child.pid
    finally:
        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()
        parent.kill()
        parent.wait(5)


def test_a_pass_sums_the_whole_tree_and_reads_pss_only_when_needed(
    parent_with_child: tuple[int, int],
) -> None:
    parent, _ = parent_with_child
    gone = 2**22  # no such pid
    targets = [Target("w1", parent, 1024 * MiB, None), Target("w2", gone, None, None)]
    result = measure(targets, now=5.0)
    assert set(result.figures) == {"w1"}  # a worker that exited meanwhile has no figures
    figures = result.figures["w1"]
    assert figures.processes == 2
    assert figures.rss_bytes > 40 * MiB  # the child's memory counts
    assert figures.pss is not None
    assert figures.pss.at == 5.0
    assert figures.pss.kind is MemoryKind.PSS
    assert 40 * MiB < figures.pss.bytes <= figures.rss_bytes
    assert result.cpu_s >= 0
    assert result.wall_s > 0

    # Read a moment later: the RSS is within the limit and the PSS fresh, so not read again.
    again = measure([Target("w1", parent, 1024 * MiB, figures.pss)], now=6.0)
    assert again.figures["w1"].pss == figures.pss
    assert again.figures["w1"].judged_bytes == again.figures["w1"].rss_bytes


def test_freshness_reads_are_spread_over_passes_and_every_tree_is_read_in_time() -> None:
    assert pss_budget(1, SHOWN_ONLY_INTERVAL_S) == PSS_MIN_READS_PER_PASS
    for trees, interval in [(50, SHOWN_ONLY_INTERVAL_S), (50, CHECK_INTERVAL_S), (500, 2.0)]:
        budget = pss_budget(trees, interval)
        assert budget < trees  # not a burst of every tree at once
        passes_to_read_all = -(-trees // budget)
        assert passes_to_read_all * interval <= PSS_REFRESH_S  # each read once per refresh


def test_a_pass_reads_pss_within_its_budget_new_trees_first_and_always_for_the_limit(
    parent_with_child: tuple[int, int],
) -> None:
    parent, _ = parent_with_child
    old = PssReading(50 * MiB, 0.0, 50 * MiB, MemoryKind.PSS)  # due for a refresh at 400.0
    targets = [
        Target("old", parent, None, old),
        Target("new1", parent, None, None),
        Target("new2", parent, None, None),
        Target("over", parent, 10 * MiB, old),  # its RSS is over its limit
    ]
    result = measure(targets, now=400.0, budget=2)
    read = {w for w, figures in result.figures.items() if figures.pss and figures.pss.at == 400.0}
    assert read == {"new1", "new2", "over"}  # the never-read first; the limit is not held back
    assert result.figures["old"].pss == old  # its turn comes in a later pass
    assert result.figures["over"].judged_bytes == result.figures["over"].pss.bytes  # type: ignore[union-attr]

    nothing = measure(targets, now=400.0, budget=0)
    assert {w for w, f in nothing.figures.items() if f.pss and f.pss.at == 400.0} == {"over"}


def test_where_pss_cannot_be_read_rss_stands_in_and_says_so(
    parent_with_child: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, child = parent_with_child

    def denied(self: psutil.Process) -> object:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_full_info", denied)
    result = measure([Target("w1", parent, 10 * MiB, None)], now=1.0)
    figures = result.figures["w1"]
    assert figures.pss is not None
    assert figures.pss.kind is MemoryKind.RSS
    assert figures.pss.bytes == figures.rss_bytes
    assert {pid for pid, _ in result.pss_unreadable} == {parent, child}
    assert over_limit(result.figures, {"w1": 10 * MiB})[0].fields()["kind"] == "rss"


def test_without_a_limit_passes_are_rarer_but_a_new_worker_or_a_limit_brings_one_soon() -> None:
    watch = MemoryWatch(structlog.get_logger(), lambda: 0)
    watch.start(0.0)
    assert watch.due(CHECK_INTERVAL_S)  # the first pass
    watch.begin({}, {"worker1": None}, CHECK_INTERVAL_S, lambda event: None)  # nothing serves
    last = CHECK_INTERVAL_S
    assert watch.deadline == last + SHOWN_ONLY_INTERVAL_S  # no limit: figures only shown
    assert not watch.due(last + CHECK_INTERVAL_S)
    watch.new_worker(last + 1.0)  # a worker registered: measure it soon
    assert watch.due(last + CHECK_INTERVAL_S)

    limited = MemoryWatch(structlog.get_logger(), lambda: 0)
    limited.start(0.0)
    limited.begin({}, {"worker1": 100 * MiB}, 2.0, lambda event: None)
    assert limited.deadline == 2.0 + CHECK_INTERVAL_S  # a limit: every CHECK_INTERVAL_S
    unlimited = MemoryWatch(structlog.get_logger(), lambda: 0)
    unlimited.start(0.0)
    unlimited.begin({}, {"worker1": None}, 2.0, lambda event: None)
    assert not unlimited.due(2.0 + CHECK_INTERVAL_S)
    assert unlimited.due(2.0 + CHECK_INTERVAL_S, limited=True)  # a limit set since


def test_a_pass_that_measured_the_new_worker_lets_the_watch_slow_down_again() -> None:
    async def passes() -> list[float | None]:
        loop = asyncio.get_running_loop()
        watch = MemoryWatch(structlog.get_logger(), lambda: 0)
        watch.start(loop.time())
        serving = {"worker1": os.getpid()}
        deadlines = []
        for _ in range(2):
            watch.new_worker(loop.time())
            done: asyncio.Future[MemoryMeasured] = loop.create_future()
            watch.begin(serving, {"worker1": None}, loop.time(), done.set_result)
            event = await done
            await asyncio.wrap_future(asyncio.ensure_future(event.outcome))
            began = loop.time()
            watch.on_measured(event, began, serving, {"worker1": None})
            deadlines.append((watch.deadline or 0.0) - began)
        return deadlines

    # The worker registered before each pass began, so each pass measured it.
    assert asyncio.run(passes()) == [SHOWN_ONLY_INTERVAL_S, SHOWN_ONLY_INTERVAL_S]
