"""``hiscrmctl events``: the master's event stream as readable lines (or JSON lines).

With ``-f`` it follows, and resumes by itself after its last event when the connection
ends (the master restarting, a cut-off for being slow): it finds the master again through
the state directory, waiting as long as it takes, so no event is missed or repeated.
"""

import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

import msgspec

from hiscrm.ctl.client import MasterClient
from hiscrm.ctl.errors import CtlError

RETRY_S = 0.5  # between attempts to find the master again
SKIP = {"at", "account_id", "id", "version", "synced_at"}
TEXT_LIMIT = 80


class Event(msgspec.Struct, frozen=True):
    id: int | None
    name: str
    data: str

    def fields(self) -> dict[str, Any]:
        try:
            parsed = json.loads(self.data)
        except ValueError:
            return {"data": self.data}
        return parsed if isinstance(parsed, dict) else {"data": parsed}


def parse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events as an EventSource reads them (comments and ``retry`` skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                event_id = fields.get("id", "")
                yield Event(
                    int(event_id) if event_id.isdigit() else None,
                    fields.get("event", "message"),
                    fields["data"],
                )
            fields.clear()
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = (
                fields[name] + "\n" + value if name == "data" and name in fields else value
            )


def line(event: Event) -> str:
    """One event as a line: when, id, name, account, then what it says."""
    data = event.fields()
    at = data.get("at") or data.get("synced_at")
    when = (
        datetime.fromtimestamp(at / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if isinstance(at, int)
        else "-"
    )
    account = data.get("account_id")
    parts = [when, f"#{event.id}" if event.id is not None else "#-", event.name]
    if isinstance(account, str):
        parts.append(account)
    if event.name.startswith("item.") and "id" in data:
        parts.append(str(data["id"]))
    for key, value in data.items():
        if key in SKIP or value is None or isinstance(value, (dict, list)):
            continue
        text = str(value).replace("\n", " ")
        if len(text) > TEXT_LIMIT:
            text = text[: TEXT_LIMIT - 1] + "…"
        parts.append(f"{key}={text}")
    return "  ".join(parts)


def show(event: Event, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps({"id": event.id, "event": event.name, "data": event.fields()}))
    else:
        out.write(line(event))
    out.write("\n")
    out.flush()


def print_events(
    connect: Callable[[], MasterClient],
    params: dict[str, Any],
    follow: bool,
    as_json: bool,
    out: TextIO = sys.stdout,
    notes: TextIO = sys.stderr,
) -> None:
    """Print the stream; with ``follow``, forever, resuming after the last event."""
    client = connect()
    last: int | None = None
    while True:
        query = dict(params, follow=str(follow).lower())
        if last is not None:
            query = {k: v for k, v in query.items() if k not in ("last", "after")}
            query["after"] = last
        try:
            for event in parse(client.stream_lines("/events", **query)):
                if event.name in ("reset", "cutoff"):
                    notes.write(f"hiscrmctl: {event.name}: {event.fields().get('reason')}\n")
                if event.id is not None:
                    last = event.id
                if event.name != "cutoff":
                    show(event, as_json, out)
        except CtlError as exc:
            if not follow or exc.fields.get("status") is not None:  # refused: not a lost line
                raise
            notes.write(f"hiscrmctl: {exc}; resuming after event {last} when it is back\n")
        if not follow:
            return
        client = _reconnect(connect)


def _reconnect(connect: Callable[[], MasterClient]) -> MasterClient:
    while True:
        try:
            return connect()
        except CtlError:
            time.sleep(RETRY_S)
