"""A bad configuration exits 2 with one line naming file, key and problem, before any
process starts; a good one is read completely."""

import subprocess
import sys
from pathlib import Path

import pytest

from hiscrm.config import EMBEDDED_DEFAULT, ConfigError, load_config, parse_config

BAD_CONFIGS = [
    ("workers = 0\n", "workers", "greater than or equal to 1"),
    ("wrokers = 3\n", "wrokers", "unknown key"),
    (
        "[supervision]\nheartbeat_interval_s = 5\nheartbeat_timeout_s = 2\n",
        "supervision",
        "heartbeat_timeout_s (2.0) must be greater than heartbeat_interval_s (5.0)",
    ),
    ("[supervision]\nstop_timeout_s = 'soon'\n", "supervision.stop_timeout_s", "valid number"),
    ("[logs]\nbackups = -1\n", "logs.backups", "greater than or equal to 0"),
    ("[api]\nport = 70000\n", "api.port", "less than or equal to 65535"),
    (
        "[api]\nhost = '0.0.0.0'\nauth = false\n",
        "api",
        "auth = false is only allowed on a loopback address, not host '0.0.0.0'",
    ),
    (
        "[[accounts]]\nid = 'a'\nplatform = 'no such thing'\n",
        "accounts[0].platform",
        "neither a built-in platform",
    ),
    ("[[accounts]]\nid = 'a'\n[[accounts]]\nid = 'a'\n", "accounts", "'a' appears more than once"),
    ("[[accounts]]\nid = 'bad id!'\n", "accounts[0].id", "should match pattern"),
    ("[[accounts]]\nplatform = 'demo'\n", "accounts[0].id", "Field required"),
    ("workers = [\n", "", "not valid TOML"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "key", "problem"), BAD_CONFIGS)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"state_dir = 'state'\n{text}")
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm.master", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hiscrm: config error: {path}: ")
    if key:
        assert f": {key}: " in lines[0]
    assert problem in lines[0]
    assert not (tmp_path / "state").exists(), "something started despite the bad config"


@pytest.mark.timeout(30)
def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm.master", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "nope.toml: cannot read" in result.stderr


@pytest.mark.timeout(30)
def test_bad_flag_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm.master", "--workers", "none"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--workers: 'none' is not a whole number" in result.stderr


def test_embedded_default_is_the_documented_demo() -> None:
    config = load_config(None)
    assert config.workers == 2
    assert [a.platform for a in config.accounts] == ["demo"] * 4
    assert config.state_dir == Path.cwd() / "var"
    assert config.platform_specs == ["hiscrm.platforms.demo:DemoPlatform"]


def test_paths_are_relative_to_the_file_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "h.toml"
    path.parent.mkdir()
    path.write_text("state_dir = 'st'\nworkers = 3\n")
    config = load_config(path)
    assert config.state_dir == tmp_path / "conf" / "st"
    assert config.worker_ids == ["worker1", "worker2", "worker3"]
    overridden = load_config(path, workers=1, state_dir=Path("rel"))
    assert overridden.workers == 1
    assert overridden.state_dir == Path.cwd() / "rel"


def test_error_names_source_key_and_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[sync]\nstale_after_s = -1\n", EMBEDDED_DEFAULT, Path("/"), {})
    assert info.value.key == "sync.stale_after_s"
    assert str(info.value).startswith("<embedded default>: sync.stale_after_s: ")


def test_several_problems_are_counted_in_the_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("workers = 0\naccounts_per_worker = 0\n", "f.toml", Path("/"), {})
    assert "(and 1 more problem)" in str(info.value)
