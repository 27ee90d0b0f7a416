"""``[store] url``: which URLs name a PostgreSQL store, and how to show one without its
password (logs, status and error messages never carry it)."""

from urllib.parse import parse_qsl, urlencode, urlsplit

SCHEMES = ("postgresql", "postgres")
HIDDEN = "***"
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def check_store_url(url: str) -> str:
    """``url`` if it names a PostgreSQL database; ValueError otherwise. The message never
    repeats the URL, which may hold a password."""
    if not url.strip():
        raise ValueError('must not be empty (leave "url" out to use SQLite in the state dir)')
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in SCHEMES:
        given = f"not {parts.scheme}://" if parts.scheme else "it has no scheme"
        raise ValueError(
            f"must be a postgresql:// or postgres:// URL, {given} "
            '(leave "url" out to use SQLite in the state dir)'
        )
    return url


def redacted(url: str) -> str:
    """``url`` with any password (in the user part or a ``password`` parameter) hidden."""
    try:
        parts = urlsplit(url)
        hostinfo = parts.netloc.rpartition("@")
    except ValueError:
        return f"<a URL that cannot be parsed ({len(url)} characters)>"
    netloc = parts.netloc
    if hostinfo[1]:
        user, has_password, _ = hostinfo[0].partition(":")
        netloc = f"{user}:{HIDDEN}@{hostinfo[2]}" if has_password else parts.netloc
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
        query = urlencode(
            [(k, HIDDEN if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/"
        )
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
