"""``/accounts/{id}/<collection>``: one set of routes per kind of item, derived from the
registry of kinds (filters, sorts, read marks)."""

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from hiscrm.items import KINDS, MS_MAX, MS_MIN, Kind, check_epoch_ms
from hiscrm.master.api.control import Control
from hiscrm.master.api.params import MAX_INT, MAX_PAGE, AccountId, ItemIdPath, only
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.schemas import STORED_MODELS, Page
from hiscrm.master.data.store import CollectionQuery, Row

# A time in a query string: a whole number, then checked like every time of an item.
QueryMs = Annotated[
    int,
    AfterValidator(check_epoch_ms),
    WithJsonSchema({"type": "integer", "minimum": MS_MIN, "maximum": MS_MAX}),
]


def collection_routes(
    router: APIRouter, read: ReadModel, control: Control, max_page_bytes: int
) -> None:
    for kind in KINDS.values():
        _add_collection(router, read, control, kind, max_page_bytes)


def page_json(rows: list[Row], total: int, query: CollectionQuery, max_bytes: int) -> bytes:
    """The page as JSON, with as many rows as fit in ``max_bytes`` (at least one)."""
    parts: list[bytes] = []
    size = 0
    for row in rows:
        part = json.dumps(row, separators=(",", ":")).encode()
        if parts and size + len(part) > max_bytes:
            break
        parts.append(part)
        size += len(part) + 1
    end = query.offset + len(parts)
    # Cut here, or the store stopped reading at the byte budget (fewer rows than asked
    # for while more match).
    short = len(parts) < query.limit and end < total
    head = {
        "total": total,
        "limit": query.limit,
        "offset": query.offset,
        "truncated": len(parts) < len(rows) or short,
        "next_offset": end if end < total else None,
    }
    return b'{"items":[' + b",".join(parts) + b"]," + json.dumps(head).encode()[1:]


def _query_model(kind: Kind) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "limit": (int, Field(50, ge=1, le=MAX_PAGE)),
        "offset": (int, Field(0, ge=0, le=MAX_INT)),
        # Times in ms, checked like every time of an item (seconds are refused).
        "since": (
            QueryMs | None,
            Field(None, description=f"ms, {kind.time_field} >= since"),
        ),
        "until": (
            QueryMs | None,
            Field(None, description=f"ms, {kind.time_field} < until"),
        ),
        "sort": (Literal[kind.sort_columns], kind.time_field),
        "order": (Literal["asc", "desc"], "desc"),
    }
    fields.update({name: (str | None, Field(None, min_length=1)) for name in kind.filters})
    if kind.readable:
        fields["is_read"] = (bool | None, None)
    model: type[BaseModel] = create_model(
        f"{kind.collection.title()}Query", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _add_collection(
    router: APIRouter, read: ReadModel, control: Control, kind: Kind, max_page_bytes: int
) -> None:
    collection = kind.collection
    Model = STORED_MODELS[collection]
    Params = _query_model(kind)

    async def list_items(account_id: AccountId, params: Annotated[Params, Query()]) -> Any:  # type: ignore[valid-type]
        values = params.model_dump()  # type: ignore[attr-defined]
        query = CollectionQuery(
            account_id=account_id,
            filters={f: values[f] for f in kind.filters if values.get(f) is not None},
            is_read=values.get("is_read"),
            since=values["since"],
            until=values["until"],
            sort=values["sort"],
            order=values["order"],
            limit=values["limit"],
            offset=values["offset"],
            max_bytes=max_page_bytes,
        )
        rows, total = await read.page(collection, query)
        # Serialized off the loop, and cut at max_page_bytes: a page of big items must
        # neither block the master nor balloon its memory.
        body = await asyncio.to_thread(page_json, rows, total, query, max_page_bytes)
        return Response(body, media_type="application/json")

    router.add_api_route(
        f"/accounts/{{account_id}}/{collection}",
        list_items,
        methods=["GET"],
        response_model=Page[Model],  # type: ignore[valid-type]
        name=f"list_{collection}",
    )

    async def get_one(account_id: AccountId, item_id: ItemIdPath) -> Any:
        return await read.item(collection, account_id, item_id)

    router.add_api_route(
        f"/accounts/{{account_id}}/{collection}/{{item_id}}",
        get_one,
        methods=["GET"],
        response_model=Model,
        name=f"get_{kind.name}",
        dependencies=[Depends(only())],
    )
    if not kind.readable:
        return

    async def mark_read(account_id: AccountId, item_id: ItemIdPath) -> Any:
        return await control.mark_read(collection, account_id, item_id)

    router.add_api_route(
        f"/accounts/{{account_id}}/{collection}/{{item_id}}/read",
        mark_read,
        methods=["POST"],
        response_model=Model,
        name=f"mark_{kind.name}_read",
        dependencies=[Depends(only())],
    )
