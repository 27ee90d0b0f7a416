"""A bad configuration exits 2 with one line naming file, key and problem, before any
process starts; a good one is read completely."""

import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from hiscrm.config import EMBEDDED_DEFAULT, Config, ConfigError, load_config, parse_config
from hiscrm.config_diff import RESTART, diff, keep_running

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
    (  # an account's options must fit in its assignment, well under the pipe's frame
        f"[[accounts]]\nid = 'a'\noptions = {{ pad = '{'y' * 70_000}' }}\n",
        "accounts[0].options",
        "70,011 bytes of JSON, at most 65,536",
    ),
    (
        "[[accounts]]\nid = 'a'\noptions = { rate = inf }\n",
        "accounts[0].options.rate",
        "inf is not a finite number",
    ),
    ("[[accounts]]\nid = 'a'\noptions = { at = 1979-05-27 }\n", "accounts[0].options.at", "date"),
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


def test_plugin_paths_start_with_the_config_files_directory(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "h.toml"
    path.parent.mkdir()
    path.write_text('plugin_paths = ["plugins", "/opt/shared", "."]\n')
    config = load_config(path)
    conf = tmp_path / "conf"
    assert config.plugin_paths == [conf, conf / "plugins", Path("/opt/shared")]
    assert load_config(None).plugin_paths == []
    with pytest.raises(ConfigError) as info:
        parse_config('plugin_paths = ["a", " "]\n', "f.toml", Path("/"), {})
    assert str(info.value) == (
        'f.toml: plugin_paths: an entry is empty (use "." for the config file\'s directory)'
    )


def test_error_names_source_key_and_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[sync]\nstale_after_s = -1\n", EMBEDDED_DEFAULT, Path("/"), {})
    assert info.value.key == "sync.stale_after_s"
    assert str(info.value).startswith("<embedded default>: sync.stale_after_s: ")


def test_several_problems_are_counted_in_the_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("workers = 0\naccounts_per_worker = 0\n", "f.toml", Path("/"), {})
    assert "(and 1 more problem)" in str(info.value)


# --- Every number has a finite, sensible range -------------------------------------------


def _is_number(annotation: Any) -> bool:
    """int or float, possibly Annotated or optional; never bool."""
    if get_origin(annotation) is Annotated:
        return _is_number(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_number(arg) for arg in get_args(annotation) if arg is not type(None))
    return annotation in (int, float)


def numeric_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every numeric key of the config model, dotted, found by walking the model: a key
    added later is covered without touching this test."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += numeric_keys(annotation, f"{prefix}{name}.")
        elif _is_number(annotation):
            keys.append(f"{prefix}{name}")
    return keys


def toml_setting(key: str, value: str) -> str:
    section, _, name = key.rpartition(".")
    return f"[{section}]\n{name} = {value}\n" if section else f"{name} = {value}\n"


UNRUNNABLE = ["inf", "-inf", "nan", "1e300", "9223372036854775807"]  # the last: TOML's largest int


def test_the_numeric_keys_are_found() -> None:
    keys = numeric_keys()
    assert {"workers", "api.port", "supervision.heartbeat_timeout_s", "retention.messages"} <= set(
        keys
    )
    assert "api.auth" not in keys  # bool is not a number here
    assert len(keys) >= 20


@pytest.mark.parametrize("value", UNRUNNABLE)
@pytest.mark.parametrize("key", numeric_keys())
def test_every_number_refuses_values_the_program_cannot_run(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(toml_setting(key, value), "f.toml", Path("/"), {})
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"f.toml: {key}: ")


def run_master_with(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hiscrm.master", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("[retention]\nmessages = inf\n", "retention.messages"),
        ("[supervision]\nheartbeat_timeout_s = inf\n", "supervision.heartbeat_timeout_s"),
        ("[supervision]\nbackoff_max_s = nan\n", "supervision.backoff_max_s"),
        ("accounts_per_worker = 9223372036854775807\n", "accounts_per_worker"),
        ("[logs]\nmax_bytes = 1e300\n", "logs.max_bytes"),
        ("state_dir = ''\n", "state_dir"),
        ("[api]\nhost = ''\n", "api.host"),
    ],
)
def test_master_exits_2_naming_the_key_of_a_value_it_cannot_run(
    tmp_path: Path, setting: str, key: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        setting if setting.startswith("state_dir") else f"state_dir = 'state'\n{setting}"
    )
    result = run_master_with(tmp_path, "--config", str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hiscrm: config error: {path}: {key}: "), lines[0]
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "var").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("100000", "--workers: Input should be less than or equal to 512"),
        ("inf", "--workers: 'inf' is not a whole number"),
        ("0", "--workers: Input should be greater than or equal to 1"),
    ],
)
def test_workers_flag_is_checked_like_the_key(tmp_path: Path, value: str, problem: str) -> None:
    result = run_master_with(tmp_path, "--workers", value)
    assert result.returncode == 2
    assert problem in result.stderr
    assert "config error" not in result.stderr  # a flag, not the file, was wrong
    assert not (tmp_path / "var").exists()


@pytest.mark.timeout(30)
def test_empty_state_dir_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run_master_with(tmp_path, "--state-dir", "")
    assert result.returncode == 2
    assert "--state-dir: must not be empty" in result.stderr
    assert not (tmp_path / "var").exists()


def test_empty_or_nul_state_dir_is_an_error() -> None:
    for text in ("state_dir = ''\n", "state_dir = '   '\n", 'state_dir = "a\\u0000b"\n'):
        with pytest.raises(ConfigError) as info:
            parse_config(text, "f.toml", Path("/"), {})
        assert info.value.key == "state_dir", text


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfworkers = 3\n[sync]\nstale_after_s = 20\n")
    config = load_config(path)
    assert (config.workers, config.sync.stale_after_s) == (3, 20)


@pytest.mark.timeout(60)
def test_master_reads_a_file_with_a_bom(tmp_path: Path) -> None:
    """Shown with a file that is bad after the BOM: the error names the key, so the BOM
    itself was read past (before, the file was "not valid TOML" at line 1, column 1)."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfstate_dir = 'state'\nworkers = 1000\n")
    result = run_master_with(tmp_path, "--config", str(path))
    assert result.returncode == 2
    assert f"hiscrm: config error: {path}: workers: " in result.stderr


def test_retention_days_are_bounded_in_one_place() -> None:
    config = parse_config("[retention]\nmessages = 36500\ncomments = 0.5\n", "f", Path("/"), {})
    assert config.retention.days() == {"messages": 36500, "comments": 0.5}
    with pytest.raises(ConfigError, match=r"retention\.messages: .*less than or equal to 36500"):
        parse_config("[retention]\nmessages = 36501\n", "f", Path("/"), {})


@pytest.mark.parametrize("text", ["", "\ufeff", " \n\t\n", "# only a comment\n\n# and another\n"])
def test_a_file_without_any_key_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.toml", Path("/"), {"workers": 3})
    assert str(caught.value) == "f.toml: the file is empty"


def test_a_running_master_keeps_the_keys_only_a_restart_applies() -> None:
    started = parse_config(
        'state_dir = "/old"\n[api]\nport = 3000\n[store]\nmin_free_mb = 10\n'
        '[cluster]\nnode_id = "a"\n',
        "f.toml",
        Path("/"),
        {},
    )
    text = (
        'state_dir = "/new"\nworkers = 5\n[api]\nport = 4000\nhost = "::1"\n'
        '[store]\nurl = "postgresql://db/x"\nmin_free_mb = 20\n'
        '[cluster]\nnode_id = "b"\nlease_ttl_s = 60\n[logs]\nbackups = 1\n'
    )
    new = parse_config(text, "f.toml", Path("/"), {})
    applied = keep_running(started, new)
    assert {c.key for c in diff(started, new) if c.applies == RESTART} == {
        "state_dir", "api.port", "api.host", "store.url", "cluster.node_id", "cluster.lease_ttl_s"
    }  # fmt: skip
    assert [c.key for c in diff(started, applied) if c.applies == RESTART] == []
    assert (applied.state_dir, applied.api, applied.cluster) == (
        started.state_dir, started.api, started.cluster
    )  # fmt: skip
    assert (applied.store.url, applied.store.min_free_mb) == (None, 20)
    assert (applied.workers, applied.logs.backups) == (5, 1)
