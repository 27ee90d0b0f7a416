"""The systemd unit in docs/deploy agrees with the master: notify type, SIGHUP to reload,
SIGTERM to the master alone, and a stop timeout longer than the master's own."""

from harness import REPO

from hiscrm.config import load_config

UNIT = REPO / "docs" / "deploy" / "hiscrm.service"


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_the_unit_matches_how_the_master_starts_reloads_and_stops() -> None:
    unit = unit_settings()
    supervision = load_config(None).supervision
    assert unit["Type"] == "notify"
    assert unit["ExecStart"].split()[0].endswith("/hiscrm-master")
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["KillMode"] == "mixed"
    assert float(unit["TimeoutStopSec"]) > supervision.stop_timeout_s + supervision.kill_timeout_s
    assert unit["RestartPreventExitStatus"] == "2"  # a bad config
    assert unit["WorkingDirectory"] == f"/var/lib/{unit['StateDirectory']}"
