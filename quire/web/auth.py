"""Who is asking: a session cookie, a bearer token, or nobody; and the gate in front of every page.

    Authorization: Bearer quire_...   a user's API token (scripts); a wrong one is a 403
    Cookie: quire_session=...         a browser that logged in at /login
    neither                           anonymous: reads when `[web] anonymous = "read"`

`AuthGate` (an ASGI middleware) works out the `Identity` of each request
once and keeps it in `current` (a context variable the pages' templates
read), refuses a wrong token (403), and, with `anonymous = "none"`, sends
anonymous visitors to /login (pages) or answers 401 (API, streams, badges).

Failed logins are slowed by `Throttle`: after `FREE_FAILURES` failures for
a user name, or from an address, each further attempt within a growing
wait (1 s, 2 s, 4 s ... at most `MAX_WAIT_S`) is refused with 429 without
looking at the password; a success clears the user's count. The counts
live in the server's memory (a restart forgets them) and at most
`MAX_KEYS` of them (the oldest go first).
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from quire.web.accounts import Account, AccountStore

COOKIE = "quire_session"
Anonymous = Literal["read", "none"]
FREE_FAILURES = 3
MAX_WAIT_S = 300.0
MAX_KEYS = 10_000
# Paths anyone may reach, logged in or not, whatever `anonymous` says.
PUBLIC = ("/login", "/static/")


@dataclass(frozen=True)
class Identity:
    """Who sent a request. `csrf` is the session's token (forms must send it back)."""

    user: Account | None = None
    via: Literal["anonymous", "session", "token"] = "anonymous"
    csrf: str | None = None
    cookie: str | None = None
    bad_token: bool = False

    @property
    def operator(self) -> bool:
        return self.user is not None and self.user.operator


ANONYMOUS = Identity()
current: ContextVar[Identity] = ContextVar("quire_identity", default=ANONYMOUS)


def csrf_ok(identity: Identity, sent: str | None) -> bool:
    """Whether `sent` is the CSRF token of the identity's session (a token needs none)."""
    if identity.via == "token":
        return True
    if identity.csrf is None or not sent:
        return False
    return hmac.compare_digest(identity.csrf.encode(), sent.encode())


class Throttle:
    """Failed logins per key (`user:NAME`, `addr:IP`), on a clock tests can turn."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def wait_s(self, keys: list[str]) -> float:
        """Seconds before any of `keys` may try again (0: now)."""
        now = self.clock()
        waits = [0.0]
        for key in keys:
            count, last = self._failures.get(key, (0, 0.0))
            if count >= FREE_FAILURES:
                wait = min(MAX_WAIT_S, 2.0 ** (count - FREE_FAILURES))
                waits.append(last + wait - now)
        return max(waits)

    def failed(self, keys: list[str]) -> None:
        now = self.clock()
        for key in keys:
            count, _ = self._failures.pop(key, (0, 0.0))
            self._failures[key] = (count + 1, now)
        while len(self._failures) > MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def attempt(self, keys: list[str]) -> float:
        """Seconds before any of `keys` may try again; 0: go ahead, and the try counts as a
        failure until `passed` takes it back. Counted before the password is checked (in a
        thread), so tries sent at once cannot all pass the same check."""
        wait = self.wait_s(keys)
        if wait <= 0:
            self.failed(keys)
        return wait

    def passed(self, *, cleared: list[str], kept: list[str]) -> None:
        """The try `attempt` let through succeeded: `cleared` keys forget every failure,
        `kept` keys only this try (an address keeps the failures it had before)."""
        self.succeeded(cleared)
        for key in kept:
            count, last = self._failures.pop(key, (1, 0.0))
            if count > 1:
                self._failures[key] = (count - 1, last)


def identify(accounts: AccountStore, headers: Headers) -> Identity:
    """The identity a request's Authorization header or session cookie proves."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        user = accounts.check_token(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            return Identity(bad_token=True)
        return Identity(user=user, via="token")
    cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE)
    if cookie:
        session = accounts.session(cookie)
        if session is not None:
            return Identity(user=session.user, via="session", csrf=session.csrf, cookie=cookie)
    return ANONYMOUS


def wants_json(path: str) -> bool:
    return path.startswith(("/api/", "/live/", "/badge/"))


class AuthGate:
    """Works out each request's identity and turns away those it may not serve."""

    def __init__(self, app: ASGIApp, accounts: AccountStore, anonymous: Anonymous) -> None:
        self.app = app
        self.accounts = accounts
        self.anonymous = anonymous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import anyio

        headers = Headers(scope=scope)
        identity = await anyio.to_thread.run_sync(identify, self.accounts, headers)
        path: str = scope["path"]
        if identity.bad_token:
            response = JSONResponse(
                {"error": "the API token is wrong or revoked (see `quire ci token list`)"}, 403
            )
            await response(scope, receive, send)
            return
        public = path.startswith(PUBLIC)
        if identity.user is None and self.anonymous == "none" and not public:
            await _login_first(path, scope)(scope, receive, send)
            return
        token = current.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            current.reset(token)


def _login_first(path: str, scope: Scope) -> JSONResponse | RedirectResponse:
    if wants_json(path) or scope["method"] not in ("GET", "HEAD"):
        return JSONResponse(
            {"error": "log in first (at /login), or send Authorization: Bearer TOKEN"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    query = scope.get("query_string", b"").decode("latin-1")
    target = path + (f"?{query}" if query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target
