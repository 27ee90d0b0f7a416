"""``[store] url``: which URLs are accepted, how one is shown without its password, and
which store the master opens."""

import sys
from pathlib import Path

import pytest
import structlog

from hiscrm.config import ConfigError, parse_config
from hiscrm.master.data.open_store import open_store
from hiscrm.master.data.postgres_store import PostgresStore
from hiscrm.master.data.sqlite_store import SqliteStore
from hiscrm.master.data.store import StoreError
from hiscrm.store_url import redacted


def config_with(url_line: str, tmp_path: Path) -> object:
    return parse_config(f"[store]\n{url_line}\n", "hiscrm.toml", tmp_path, {})


@pytest.mark.parametrize(
    "url", ["postgresql://u:pw@db.example:5432/crm", "postgres://db/crm", "postgresql:///crm"]
)
def test_postgresql_urls_are_accepted(url: str, tmp_path: Path) -> None:
    config = parse_config(f'[store]\nurl = "{url}"\n', "hiscrm.toml", tmp_path, {})
    assert config.store.url == url


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            'url = "mysql://u:hunter2@db/crm"',
            "must be a postgresql:// or postgres:// URL, not mysql://",
        ),
        ('url = "db.example/crm"', "must be a postgresql:// or postgres:// URL, it has no scheme"),
        ('url = "postgresql://u:hunter2@db:99999/crm"', "not a valid URL"),
        ('url = ""', "must not be empty"),
        ('url = "postgresql://u:hunter2@db/crm x"', "must not contain spaces"),
        ("url = 5", "Input should be a valid string"),
        ('uri = "postgresql://db/crm"', "unknown key"),
    ],
)
def test_a_bad_store_url_is_one_line_naming_the_key_and_never_the_password(
    line: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        config_with(line, tmp_path)
    message = str(raised.value)
    assert message.startswith("hiscrm.toml: store.ur")
    assert problem in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_no_store_section_keeps_sqlite(tmp_path: Path) -> None:
    config = parse_config("workers = 1\n", "hiscrm.toml", tmp_path, {})
    assert config.store.url is None
    store = open_store(config, structlog.get_logger())
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "var" / "hiscrm.db"


def test_a_url_opens_postgresql_shown_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://crm:hunter2@db.example:5433/crm?sslmode=require"
    config = parse_config(f'[store]\nurl = "{url}"\n', "hiscrm.toml", tmp_path, {})
    store = open_store(config, structlog.get_logger())  # not started: nothing connects
    assert isinstance(store, PostgresStore)
    assert store.stats().where == "postgresql://crm:***@db.example:5433/crm?sslmode=require"


def test_without_the_driver_a_url_is_refused_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "hiscrm.master.data.postgres_store", None)
    config = parse_config('[store]\nurl = "postgres://db/crm"\n', "hiscrm.toml", tmp_path, {})
    with pytest.raises(StoreError, match=r"pip install 'hiscrm\[postgres\]'"):
        open_store(config, structlog.get_logger())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql:///db?host=/run/pg", "postgresql:///db?host=/run/pg"),
        (
            "postgres://u:x@[::1]:5/d?password=y&sslmode=verify-full",
            "postgres://u:***@[::1]:5/d?password=***&sslmode=verify-full",
        ),
        ("postgresql://u:a@b@h/db", "postgresql://u:***@h/db"),
    ],
)
def test_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert redacted(url) == shown
