"""Sessions of the dashboard: one-time sign-in codes, session cookies, CSRF tokens.

``hiscrmctl open`` asks for a sign-in code with the bearer token; the code is good once,
for :data:`CODE_TTL_S` seconds. The browser exchanges it for a session cookie.

A session cookie holds its id, its expiry and an HMAC of both under a key derived from the
API token, so it survives a master restart (the page resumes) and dies with the token (a
new token signs every session out), and the master keeps no session table. Its CSRF
token is an HMAC of the session id under the same key: the page reads it from
``GET /api/v1/session`` and sends it in ``X-CSRF-Token`` with every write. Every
comparison is constant-time.

Pure apart from the clock (``now_ms`` is passed in): tests call it without a master.
"""

import base64
import hashlib
import hmac
import secrets
from collections import Counter, OrderedDict
from enum import Enum

import msgspec

CODE_TTL_S = 60.0  # a sign-in code is good this long, once
MAX_CODES = 64  # codes waiting at once; a new one beyond this pushes out the oldest
COOKIE_VERSION = "v1"
CSRF_HEADER = b"x-csrf-token"


class SignInRefusal(Enum):
    UNKNOWN = "unknown"  # never made here (or made by a master before a restart)
    USED = "used"  # good once, and it was used
    EXPIRED = "expired"


class CookieRefusal(Enum):
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"  # tampered with, or signed with another token
    EXPIRED = "expired"


SIGN_IN_REFUSED = {
    SignInRefusal.UNKNOWN: "this sign-in link is not known to this master",
    SignInRefusal.USED: "this sign-in link was used already; each link signs in once",
    SignInRefusal.EXPIRED: "this sign-in link has expired",
}
COOKIE_REFUSED = {
    CookieRefusal.MALFORMED: "the session cookie is not one this master made",
    CookieRefusal.BAD_SIGNATURE: "the session cookie is not valid (made with another token?)",
    CookieRefusal.EXPIRED: "the session has expired",
}
SIGN_IN_AGAIN = "sign in again: run 'hiscrmctl open' for a new link"


class SignInCode(msgspec.Struct, frozen=True):
    code: str
    expires_at: int  # ms


class Session(msgspec.Struct, frozen=True):
    id: str
    expires_at: int  # ms
    cookie: str  # the cookie's value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


class Sessions:
    def __init__(self, token: str, ttl_s: float) -> None:
        self._key = hmac.new(token.encode(), b"hiscrm dashboard session", hashlib.sha256).digest()
        self.ttl_ms = round(ttl_s * 1000)
        # Two masters on one host share cookies (cookies ignore ports): the name is the
        # key's, so each master finds its own.
        self.cookie_name = "hiscrm_session_" + hashlib.sha256(self._key).hexdigest()[:8]
        self._codes: OrderedDict[bytes, int] = OrderedDict()  # sha256(code) -> expires_at
        self._used: dict[bytes, int] = {}  # used codes until they would have expired
        self.sign_ins: Counter[str] = Counter()  # ok, refused
        self.refusals: Counter[str] = Counter()  # cookie and CSRF refusals by reason

    # --- sign-in codes -------------------------------------------------------------------

    def new_code(self, now_ms: int) -> SignInCode:
        self._forget_expired(now_ms)
        code = secrets.token_urlsafe(24)
        expires_at = now_ms + round(CODE_TTL_S * 1000)
        self._codes[_digest(code)] = expires_at
        while len(self._codes) > MAX_CODES:
            self._codes.popitem(last=False)
        return SignInCode(code, expires_at)

    def redeem(self, code: str, now_ms: int) -> Session | SignInRefusal:
        """A new session for a good code (which is then used up), or why not."""
        digest = _digest(code)  # looked up by hash: the lookup's timing tells nothing
        expires_at = self._codes.pop(digest, None)
        refusal: SignInRefusal | None = None
        if expires_at is None:
            refusal = SignInRefusal.USED if digest in self._used else SignInRefusal.UNKNOWN
        elif expires_at <= now_ms:
            refusal = SignInRefusal.EXPIRED
        else:
            self._used[digest] = expires_at
        self._forget_expired(now_ms)
        if refusal is not None:
            self.sign_ins["refused"] += 1
            return refusal
        self.sign_ins["ok"] += 1
        return self.new_session(now_ms)

    def _forget_expired(self, now_ms: int) -> None:
        for table in (self._codes, self._used):
            for digest in [d for d, at in table.items() if at <= now_ms]:
                del table[digest]

    # --- sessions --------------------------------------------------------------------------

    def new_session(self, now_ms: int) -> Session:
        session_id = secrets.token_urlsafe(16)
        expires_at = now_ms + self.ttl_ms
        body = f"{COOKIE_VERSION}.{session_id}.{expires_at}"
        return Session(session_id, expires_at, f"{body}.{self._sign(body)}")

    def check(self, cookie: str, now_ms: int) -> Session | CookieRefusal:
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != COOKIE_VERSION or not parts[2].isdigit():
            return self._refused(CookieRefusal.MALFORMED)
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3].encode(), self._sign(body).encode()):
            return self._refused(CookieRefusal.BAD_SIGNATURE)
        expires_at = int(parts[2])
        if expires_at <= now_ms:
            return self._refused(CookieRefusal.EXPIRED)
        return Session(parts[1], expires_at, cookie)

    def _refused(self, refusal: CookieRefusal) -> CookieRefusal:
        self.refusals[refusal.value] += 1
        return refusal

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf.{session.id}")

    def csrf_matches(self, session: Session, given: str) -> bool:
        ok = hmac.compare_digest(given.encode(), self.csrf_token(session).encode())
        if not ok:
            self.refusals["csrf"] += 1
        return ok

    def public_id(self, session: Session) -> str:
        """What the log says of a session: enough to follow it, useless to forge it."""
        return hashlib.sha256(session.id.encode()).hexdigest()[:12]

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())
