"""The Kubernetes example in docs/deploy agrees with the master: its config parses, its
grace period outlasts the master's own stop, and the cluster guide's defaults are the
program's."""

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from harness import REPO

from hiscrm.config import load_config, parse_config

pytestmark = pytest.mark.timeout(10)
EXAMPLE = REPO / "docs" / "deploy" / "kubernetes" / "hiscrm.yaml"
GUIDE = REPO / "docs" / "deploy" / "CLUSTER.md"


def test_the_kubernetes_example_is_a_valid_cluster() -> None:
    documents = {d["kind"]: d for d in yaml.safe_load_all(EXAMPLE.read_text())}
    config_text = documents["ConfigMap"]["data"]["hiscrm.toml"]
    config = parse_config(
        config_text.replace("[cluster]", '[cluster]\nnode_id = "hiscrm-0"'),
        "hiscrm.yaml",
        Path("/"),
        {},
    )
    assert config.cluster.node_id == "hiscrm-0"
    pod = documents["StatefulSet"]["spec"]["template"]["spec"]
    supervision = config.supervision
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > supervision.stop_timeout_s + supervision.kill_timeout_s
    assert set(documents) == {"Secret", "ConfigMap", "Service", "StatefulSet"}


def test_the_guide_states_the_defaults() -> None:
    cluster = load_config(None).cluster
    text = GUIDE.read_text()
    assert f"lease_ttl_s = {cluster.lease_ttl_s:g}" in text
    assert f"lease_renew_s = {cluster.lease_renew_s:g}" in text


def test_the_kubernetes_postgres_is_the_one_the_masters_are_pointed_at() -> None:
    masters = {d["kind"]: d for d in yaml.safe_load_all(EXAMPLE.read_text())}
    server = {
        d["kind"]: d for d in yaml.safe_load_all((EXAMPLE.parent / "postgres.yaml").read_text())
    }
    url = urlsplit(masters["Secret"]["stringData"]["store-url"])
    service = server["Service"]
    assert url.hostname is not None
    assert url.hostname.split(".")[0] == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]
    pod = server["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in pod["env"]}
    assert url.username == env["POSTGRES_USER"]["value"]
    assert url.path.lstrip("/") == env["POSTGRES_DB"]["value"]
    assert url.password == server["Secret"]["stringData"]["password"]
