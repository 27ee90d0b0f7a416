"""The dashboard's files (``hiscrm/master/ui/static``), read once when the API is made and
served from memory: each with its type, a strong ETag, and a gzip copy for clients that
take it. Plain files shipped in the package: no build step, no Node toolchain."""

import gzip
import hashlib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

import msgspec

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# What the page may load: its own files and its own API, nothing else (no inline script,
# no other origin); no framing (clickjacking), no referrer (the sign-in code stays here).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


class Asset(msgspec.Struct, frozen=True):
    path: str  # relative to the static directory, with '/'
    body: bytes
    gzipped: bytes | None  # None when compressing does not pay
    content_type: str
    etag: str


def static_root() -> Traversable:
    return resources.files("hiscrm.master").joinpath("ui", "static")


def _walk(folder: Traversable, prefix: str) -> list[tuple[str, Traversable]]:
    found: list[tuple[str, Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            found += _walk(entry, f"{prefix}{entry.name}/")
        elif PurePosixPath(entry.name).suffix in TYPES:
            found.append((prefix + entry.name, entry))
    return found


def load_assets(root: Traversable | None = None) -> dict[str, Asset]:
    """Every file of the dashboard, by its path under ``/ui/``."""
    assets: dict[str, Asset] = {}
    for path, entry in _walk(root or static_root(), ""):
        body = entry.read_bytes()
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        assets[path] = Asset(
            path,
            body,
            packed if len(packed) < len(body) * 0.9 else None,
            TYPES[PurePosixPath(path).suffix],
            '"' + hashlib.sha256(body).hexdigest()[:20] + '"',
        )
    return assets
