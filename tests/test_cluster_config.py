"""``[cluster]``: the node's id, its lease times and its capacity, checked at load."""

import re
from pathlib import Path

import pytest

from hiscrm.config import (
    EMBEDDED_DEFAULT,
    NODE_ID_PATTERN,
    ConfigError,
    default_node_id,
    parse_config,
)
from hiscrm.config_diff import RESTART, applies

pytestmark = pytest.mark.timeout(10)


def parse(text: str) -> object:
    return parse_config(text, "f.toml", Path("/"), {})


def test_defaults_name_the_host_and_fill_the_workers() -> None:
    config = parse_config("workers = 3\naccounts_per_worker = 4\n", EMBEDDED_DEFAULT, Path("/"), {})
    assert config.cluster.node_id == default_node_id()
    assert re.match(NODE_ID_PATTERN, config.cluster.node_id)
    assert config.node_capacity == 12
    assert config.cluster.lease_renew_s * 3 <= config.cluster.lease_ttl_s


def test_given_values_are_kept() -> None:
    config = parse_config(
        '[cluster]\nnode_id = "m-2.eu"\nlease_ttl_s = 6\nlease_renew_s = 1\ncapacity = 7\n',
        "f.toml",
        Path("/"),
        {},
    )
    assert (config.cluster.node_id, config.cluster.lease_ttl_s) == ("m-2.eu", 6.0)
    assert (config.cluster.lease_renew_s, config.node_capacity) == (1.0, 7)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[cluster]\nnode_id = ""\n', "cluster.node_id"),
        ('[cluster]\nnode_id = "a b"\n', "cluster.node_id"),
        ('[cluster]\nnode_id = "-x"\n', "cluster.node_id"),
        ('[cluster]\nnode_id = "' + "x" * 64 + '"\n', "cluster.node_id"),
        ("[cluster]\nlease_ttl_s = 0.5\n", "cluster.lease_ttl_s"),
        ("[cluster]\ncapacity = -1\n", "cluster.capacity"),
        ("[cluster]\nlease_ttl_s = 5\nlease_renew_s = 2\n", "cluster"),
        ("[cluster]\nlease_time = 5\n", "cluster.lease_time"),
    ],
)
def test_bad_values_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.key == key, str(info.value)


def test_the_renewal_must_fit_the_lease_three_times() -> None:
    with pytest.raises(ConfigError) as info:
        parse("[cluster]\nlease_ttl_s = 5\nlease_renew_s = 2\n")
    assert "lease_renew_s (2.0) must be at most a third of lease_ttl_s (5.0)" in str(info.value)


def test_cluster_settings_need_a_restart() -> None:
    assert applies("cluster.node_id") == RESTART
    assert applies("cluster.lease_ttl_s") == RESTART


def test_a_host_name_becomes_a_usable_node_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "_web 1.example.com")
    assert default_node_id() == "n_web-1"
    assert re.match(NODE_ID_PATTERN, default_node_id())
