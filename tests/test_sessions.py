"""The dashboard's sessions without a master: one-time codes, signed cookies, CSRF tokens;
and the dashboard's files as the package ships them."""

import fnmatch
import tomllib

from harness import REPO

from hiscrm.master.api.sessions import (
    CODE_TTL_S,
    CookieRefusal,
    Session,
    Sessions,
    SignInRefusal,
)
from hiscrm.master.api.ui_assets import load_assets, static_root

NOW = 1_800_000_000_000
TTL_S = 3600.0


def test_a_code_signs_in_once_and_only_before_it_expires() -> None:
    sessions = Sessions("the-token", TTL_S)
    code = sessions.new_code(NOW)
    assert code.expires_at == NOW + CODE_TTL_S * 1000
    session = sessions.redeem(code.code, NOW + 1000)
    assert isinstance(session, Session)
    assert session.expires_at == NOW + 1000 + TTL_S * 1000
    assert sessions.redeem(code.code, NOW + 2000) is SignInRefusal.USED
    assert sessions.redeem("made-up", NOW) is SignInRefusal.UNKNOWN
    late = sessions.new_code(NOW)
    assert sessions.redeem(late.code, late.expires_at) is SignInRefusal.EXPIRED
    assert sessions.sign_ins == {"ok": 1, "refused": 3}


def test_used_and_expired_codes_are_forgotten_and_waiting_codes_are_bounded() -> None:
    sessions = Sessions("the-token", TTL_S)
    first = sessions.new_code(NOW)
    for _ in range(100):
        sessions.new_code(NOW)
    # The oldest was pushed out by the newer ones: it is no longer known.
    assert sessions.redeem(first.code, NOW) is SignInRefusal.UNKNOWN
    code = sessions.new_code(NOW)
    assert isinstance(sessions.redeem(code.code, NOW), Session)
    # Once it would have expired, a used code is forgotten too (nothing grows forever).
    sessions.new_code(code.expires_at + 1)
    assert sessions.redeem(code.code, code.expires_at + 1) is SignInRefusal.UNKNOWN


def test_a_cookie_is_checked_for_its_signature_and_expiry() -> None:
    sessions = Sessions("the-token", TTL_S)
    session = sessions.new_session(NOW)
    checked = sessions.check(session.cookie, NOW + 1)
    assert isinstance(checked, Session)
    assert (checked.id, checked.expires_at) == (session.id, session.expires_at)
    assert sessions.check(session.cookie, session.expires_at) is CookieRefusal.EXPIRED
    version, sid, expires, signature = session.cookie.split(".")
    longer = f"{version}.{sid}.{int(expires) + 10**9}.{signature}"
    assert sessions.check(longer, NOW) is CookieRefusal.BAD_SIGNATURE
    other_token = Sessions("another-token", TTL_S)
    assert other_token.check(session.cookie, NOW) is CookieRefusal.BAD_SIGNATURE
    for junk in ("", "v1", "v2.a.1.b", "v1.a.soon.b", "v1.a.1.b.c"):
        assert sessions.check(junk, NOW) is CookieRefusal.MALFORMED, junk
    assert sessions.refusals == {"expired": 1, "bad_signature": 1, "malformed": 5}


def test_the_csrf_token_belongs_to_its_session() -> None:
    sessions = Sessions("the-token", TTL_S)
    one, two = sessions.new_session(NOW), sessions.new_session(NOW)
    assert sessions.csrf_matches(one, sessions.csrf_token(one))
    assert not sessions.csrf_matches(one, sessions.csrf_token(two))
    assert not sessions.csrf_matches(one, "")
    assert sessions.refusals["csrf"] == 2
    # The log's name for a session tells nothing of its cookie.
    assert sessions.public_id(one) not in one.cookie


def test_masters_with_other_tokens_use_other_cookie_names() -> None:
    # Cookies ignore ports: two masters on one host must not overwrite each other's.
    assert Sessions("a", TTL_S).cookie_name != Sessions("b", TTL_S).cookie_name
    assert Sessions("a", TTL_S).cookie_name == Sessions("a", 60).cookie_name


def test_the_package_ships_every_file_of_the_dashboard_and_it_stays_small() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["hiscrm"]
    assets = load_assets()
    assert {"index.html", "app.js", "style.css", "views/conversations.js"} <= set(assets)
    for path in assets:
        shipped = f"master/ui/static/{path}"
        assert any(
            fnmatch.fnmatch(shipped, p) and p.count("/") == shipped.count("/") for p in patterns
        ), f"{shipped} is not in [tool.setuptools.package-data]: an installed master would lack it"
    on_disk = {
        str(p.relative_to(REPO / "hiscrm/master/ui/static"))
        for p in (REPO / "hiscrm/master/ui/static").rglob("*")
        if p.is_file()
    }
    assert on_disk == set(assets), "a file of the dashboard has a type the master does not serve"
    # One page load fetches every file at most once: under 200 kB before any data.
    assert sum(len(a.body) for a in assets.values()) < 200_000
    assert static_root().joinpath("index.html").is_file()
    # Every module is named in the page, so the browser fetches them all at once instead of
    # discovering them import by import.
    page = assets["index.html"].body.decode()
    for path in assets:
        if path.endswith(".js") and path != "app.js":
            assert f'<link rel="modulepreload" href="/ui/{path}">' in page, path
