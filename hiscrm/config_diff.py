"""What changed between two configurations, and when each change takes effect.

``hiscrmctl update`` (``POST /config/update``, SIGHUP) applies a re-read file while the
master runs. Each changed key is one of:

* ``now``: used by the decisions that follow (timeouts, backoff, staleness, quarantine,
  retention, the number of workers, the disk threshold);
* ``workers started from now on``: handed to a worker when it starts (its heartbeat
  interval, log limits, code packages, plugin paths): a reload applies it to all;
* ``needs a master restart``: the master bound or opened it at start (the API's address
  and limits, the state directory, the store, the cluster settings). The running master
  keeps its value (``keep_running``) until it restarts, so nothing it starts from then on
  (a worker's log and spool, the disk check) goes elsewhere than what it opened.

Accounts are not compared here: the registry reconciles them (``account_registry``).
"""

from typing import Any

import msgspec
from pydantic import BaseModel

from hiscrm.config import Config

NOW = "now"
NEXT_START = "workers started from now on"
RESTART = "needs a master restart"

_RESTART_PREFIXES = ("state_dir", "api.", "store.url", "cluster.")
_NEXT_START_PREFIXES = (
    "logs.",
    "code.",
    "plugin_paths",
    "supervision.heartbeat_interval_s",
    "supervision.fork_template",
)


class ConfigChange(msgspec.Struct, frozen=True):
    key: str  # dotted, as in the file: "supervision.backoff_max_s"
    old: Any
    new: Any
    applies: str  # NOW, NEXT_START or RESTART


def applies(key: str) -> str:
    if key.startswith(_RESTART_PREFIXES):
        return RESTART
    if key.startswith(_NEXT_START_PREFIXES):
        return NEXT_START
    return NOW


def _flat(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.model_dump(mode="json", exclude={"accounts"}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def diff(old: Config, new: Config) -> list[ConfigChange]:
    before, after = _flat(old), _flat(new)
    return [
        ConfigChange(key, before.get(key), after.get(key), applies(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def keep_running(running: Config, new: Config) -> Config:
    """``new`` with every key that needs a master restart at its value in ``running``
    (the configuration the master started with): what a running master can apply."""
    kept: dict[str, Any] = {}
    for name in Config.model_fields:
        if name == "accounts":
            continue
        if applies(name) == RESTART:
            kept[name] = getattr(running, name)
            continue
        section = getattr(new, name)
        if isinstance(section, BaseModel):
            inner = {
                key: getattr(getattr(running, name), key)
                for key in type(section).model_fields
                if applies(f"{name}.{key}") == RESTART
            }
            if inner:
                kept[name] = section.model_copy(update=inner)
    return new.model_copy(update=kept)
