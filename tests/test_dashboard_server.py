"""What the dashboard needed from the master, without a browser: a followed log's tail
that meets what follows it, and a health event when the reason a check names changes.
(The same in a real page: ``test_dashboard_actions.py``.)"""

from pathlib import Path

import structlog
from msgspec.structs import replace
from test_health import HEALTHY, MiB

from hiscrm.logfile import tail_lines
from hiscrm.master.api.health import HealthMonitor
from hiscrm.master.api.schemas import Health


def test_a_tail_read_for_a_follower_ends_where_the_follower_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "worker1.log"
    log.write_text("".join(f"line {n}\n" for n in range(5)))
    with log.open("rb") as follower:
        follower.seek(0, 2)  # where a follower goes on from
        with log.open("a") as worker:  # the worker writes on meanwhile
            worker.write("line 5\n")
        assert tail_lines(log, 3, follower) == ["line 2", "line 3", "line 4"]
        assert tail_lines(log, 3) == ["line 3", "line 4", "line 5"]  # without: it overlaps
        # Rotated meanwhile: still the lines before the follower's offset, of its file.
        log.rename(tmp_path / "worker1.log.1")
        log.write_text("new file\n")
        assert tail_lines(log, 2, follower) == ["line 3", "line 4"]
        assert follower.read() == b"line 5\n"  # what the follower reads next: the rest


def test_a_new_reason_is_a_health_change_but_a_moving_number_is_not() -> None:
    inputs = [replace(HEALTHY, workers={"worker1": "running", "worker2": "stopping"})]
    told: list[Health] = []
    monitor = HealthMonitor(lambda: inputs[0], structlog.get_logger(), told.append)
    monitor.assess_now()
    assert [h.checks["workers"].detail for h in told] == ["1/2 running: worker2 is stopping"]

    # Still degraded, for another reason: told, so a page does not show the old one.
    inputs[0] = replace(inputs[0], workers={"worker1": "running", "worker2": "stopped"})
    monitor.assess_now()
    assert [h.checks["workers"].detail for h in told][-1] == "1/2 running: worker2 is stopped"
    assert len(told) == 2

    # Free space moving on a degraded disk is not news; nor are the numbers of ok checks.
    inputs[0] = replace(inputs[0], disk_free_bytes=400 * MiB)
    monitor.assess_now()
    inputs[0] = replace(inputs[0], disk_free_bytes=390 * MiB)
    monitor.assess_now()
    assert [h.checks["disk"].status for h in told] == ["ok", "ok", "degraded"]
    monitor.assess_now()
    assert len(told) == 3
