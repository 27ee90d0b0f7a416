"""The dashboard's files: the page at ``/`` (also ``/ui/``), its scripts and styles under
``/ui/``. Behind the same gate as the API (``token_gate.py``)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path
from fastapi.responses import Response

from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.params import only
from hiscrm.master.api.ui_assets import SECURITY_HEADERS, Asset

INDEX = "index.html"


def asset_response(
    asset: Asset, if_none_match: str | None, accept_encoding: str | None
) -> Response:
    headers = {
        **SECURITY_HEADERS,
        "etag": asset.etag,
        # Kept, but checked again each time (a cheap 304): a new version shows at once.
        "cache-control": "no-cache",
        "vary": "accept-encoding",
    }
    if if_none_match is not None and asset.etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in (accept_encoding or ""):
        body = asset.gzipped
        headers["content-encoding"] = "gzip"
    return Response(body, media_type=asset.content_type, headers=headers)


def ui_routes(root: APIRouter, assets: dict[str, Asset]) -> None:
    if INDEX not in assets:
        raise RuntimeError(f"the dashboard's {INDEX} is missing from the package")

    async def page(
        if_none_match: Annotated[str | None, Header()] = None,
        accept_encoding: Annotated[str | None, Header()] = None,
    ) -> Response:
        """The dashboard."""
        return asset_response(assets[INDEX], if_none_match, accept_encoding)

    for path in ("/", "/ui/"):
        root.add_api_route(
            path, page, methods=["GET"], include_in_schema=False, dependencies=[Depends(only())]
        )

    @root.get("/ui/{name:path}", include_in_schema=False, dependencies=[Depends(only())])
    async def asset(
        name: Annotated[str, Path(max_length=200)],
        if_none_match: Annotated[str | None, Header()] = None,
        accept_encoding: Annotated[str | None, Header()] = None,
    ) -> Response:
        found = assets.get(name)
        if found is None:
            raise ApiError(404, f"no dashboard file {name!r}")
        return asset_response(found, if_none_match, accept_encoding)
