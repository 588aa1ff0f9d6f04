"""The pages' actions and who may take them: logging in and out, re-run, cancel, run a ref,
and the badges.

    GET  /login                          the form (username, password)
    POST /login                          a session cookie, then back where the visitor was
                                         (from another site's page: 403)
    POST /logout                         (csrf) the session ends
    POST /runs/<repo>/<run>/rerun        (csrf, operator) -> 303 to the new run's page
    POST /runs/<repo>/<run>/cancel       (csrf, operator) -> 303 to the run's page
    POST /runs/<repo>/start              (csrf, operator; form field ref) -> 303 to the new run
    POST /api/runs/<repo>/<run>/rerun    (operator) -> {"run": NEW_ID}
    POST /api/runs/<repo>/<run>/cancel   (operator) -> {"run": ID, "state": "cancelled"}
                                         (a queued run; a running one: "cancelling")
    POST /api/repos/<repo>/runs          (operator; {"ref": "main"}) -> {"run": NEW_ID}
    GET  /badge/<repo>.svg?branch=main   passing | failing | running | unknown

A form sends the session's CSRF token in its `csrf` field; a script sends
`Authorization: Bearer TOKEN` instead (or a session cookie with the token in
`X-CSRF-Token`). No credentials: 401. A viewer, a wrong token, a missing or
wrong CSRF token, or a cross-site Origin: 403. In every refused case
nothing is read from the queue or written anywhere.

A run that was queued but has not started has no record yet: its page
(`/runs/<repo>/<run>`) is then a page of its queue row, which reloads itself
until the run starts, and says so when no worker is running.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from quire.ci.store.records import RecordUnreadable, RunMeta, read_record
from quire.errors import QuireError
from quire.service import actions
from quire.service.errors import QueueEntryNotFound, QueueUnavailable
from quire.service.outcome import trigger_of
from quire.service.queue import Entry
from quire.service.queues import database_url, server_name
from quire.web import auth, badge
from quire.web.accounts import SESSION_S
from quire.web.auth import COOKIE, Identity, Throttle, csrf_ok, safe_next
from quire.web.lookup import NotFound, valid_name

if TYPE_CHECKING:
    from quire.web.app import Web
    from quire.web.index import IndexedRun

MAX_FORM_BYTES = 16 * 1024
NO_WORKER_S = 1.0  # how long the pages reuse their answer to "is a worker running?"
_RUN_PAGE = re.compile(r"/runs/([^/]+)/([^/]+)\Z")


class Actions:
    """The routes above, over one `Web` (its store, index and templates)."""

    def __init__(self, web: Web, throttle: Throttle | None = None) -> None:
        self.web = web
        self.throttle = throttle or Throttle()
        web.templates.globals["no_worker"] = self.no_worker
        # On PostgreSQL each answer is a query: a page asks twice, pages come in bursts.
        self._no_worker_said: tuple[float, str] | None = None

    def routes(self) -> list[Route]:
        post = ["POST"]
        return [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=post),
            Route("/logout", self.logout, methods=post),
            Route("/runs/{repo}/start", self.start_form, methods=post),
            Route("/runs/{repo}/{run}/rerun", self.rerun_form, methods=post),
            Route("/runs/{repo}/{run}/cancel", self.cancel_form, methods=post),
            Route("/api/runs/{repo}/{run}/rerun", self.rerun_api, methods=post),
            Route("/api/runs/{repo}/{run}/cancel", self.cancel_api, methods=post),
            Route("/api/repos/{repo}/runs", self.start_api, methods=post),
            Route("/badge/{name}", self.badge, methods=["GET"]),
        ]

    # --- logging in and out ---

    def login_page(self, request: Request) -> Response:
        return self._login_form(request.query_params.get("next"))

    def _login_form(
        self, target: str | None, status: int = 200, message: str | None = None, user: str = ""
    ) -> Response:
        return self.web.render(
            "login.html", status, next=safe_next(target), message=message, username=user
        )

    async def login(self, request: Request) -> Response:
        _check_origin(request)  # another site's form would log the visitor in as its user
        form = await _form(request)
        name, password = form.get("username", ""), form.get("password", "")
        target = form.get("next")
        address = request.client.host if request.client else "?"
        keys = [f"user:{name}", f"addr:{address}"]
        wait = self.throttle.attempt(keys)
        if wait > 0:
            seconds = int(wait) + 1
            response = self._login_form(
                target, 429, f"too many failed logins: try again in {seconds} s", name
            )
            response.headers["Retry-After"] = str(seconds)
            return response
        accounts = self.web.accounts
        user = await anyio.to_thread.run_sync(accounts.check_password, name, password)
        if user is None:
            return self._login_form(target, 401, "wrong user name or password", name)
        self.throttle.passed(cleared=keys[:1], kept=keys[1:])
        cookie = await anyio.to_thread.run_sync(accounts.open_session, user.name)
        response = RedirectResponse(safe_next(target), status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=SESSION_S,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        identity = auth.current.get()
        form = await _form(request)
        if identity.via == "session" and identity.cookie is not None:
            _check_origin(request)
            if not csrf_ok(identity, form.get("csrf")):
                raise HTTPException(403, "the form's CSRF token is wrong: reload the page")
            self.web.accounts.close_session(identity.cookie)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
        return response

    # --- the actions, from forms ---

    async def rerun_form(self, request: Request) -> Response:
        identity = _operator(request, (await _form(request)).get("csrf"))
        entry = self._rerun(request, identity)
        return RedirectResponse(_run_path(request, entry.run_id), status_code=303)

    async def cancel_form(self, request: Request) -> Response:
        identity = _operator(request, (await _form(request)).get("csrf"))
        self._cancel(request, identity)
        return RedirectResponse(_run_path(request, request.path_params["run"]), status_code=303)

    async def start_form(self, request: Request) -> Response:
        form = await _form(request)
        identity = _operator(request, form.get("csrf"))
        entry = self._start(request, identity, form.get("ref", ""))
        return RedirectResponse(_run_path(request, entry.run_id), status_code=303)

    # --- the same, for scripts ---

    def rerun_api(self, request: Request) -> Response:
        identity = _operator(request, request.headers.get("x-csrf-token"))
        return JSONResponse({"run": self._rerun(request, identity).run_id})

    def cancel_api(self, request: Request) -> Response:
        identity = _operator(request, request.headers.get("x-csrf-token"))
        done = self._cancel(request, identity)
        state = "cancelled" if done.was_queued else "cancelling"
        return JSONResponse({"run": done.entry.run_id, "state": state})

    async def start_api(self, request: Request) -> Response:
        identity = _operator(request, request.headers.get("x-csrf-token"))
        try:
            body = json.loads(await _body(request) or b"{}")
        except ValueError as exc:
            raise HTTPException(400, f"the body is not JSON: {exc}") from exc
        ref = body.get("ref") if isinstance(body, dict) else None
        if not isinstance(ref, str) or not ref:
            raise HTTPException(400, 'give the branch or tag to run: {"ref": "main"}')
        entry = await anyio.to_thread.run_sync(self._start, request, identity, ref)
        return JSONResponse({"run": entry.run_id})

    # --- what they do ---

    def _rerun(self, request: Request, identity: Identity) -> Entry:
        run = self.web.view.run(request.path_params["repo"], request.path_params["run"])
        with _refusals():
            return actions.rerun(self.web.state, run, _who(identity))

    def _cancel(self, request: Request, identity: Identity) -> actions.Cancelled:
        repo, run_id = request.path_params["repo"], request.path_params["run"]
        # Not looked up in the store: a repository's first run has no directory there until
        # it starts. The queue row must be of this repository.
        if not valid_name(repo) or not valid_name(run_id):
            raise NotFound(f"no run {run_id!r} in {repo!r}")
        with _refusals():
            return actions.cancel(self.web.state, run_id, _who(identity), repo=repo)

    def _start(self, request: Request, identity: Identity, ref: str) -> Entry:
        git_dir = self.git_dir_of(request.path_params["repo"])
        with _refusals():
            return actions.run_ref(self.web.state, git_dir, ref, _who(identity))

    def git_dir_of(self, repo: str) -> Path:
        """The repository a store name stands for, as its runs recorded it."""
        store = self.web.view.store(repo)
        for run in store.runs():
            try:
                return Path(read_record(run.path / "meta.yml", RunMeta).git_dir)
            except RecordUnreadable:
                continue
        raise NotFound(f"no runs of {repo!r} say where its repository is")

    # --- pages of runs still in the queue ---

    def queued_page(self, request: Request) -> Response | None:
        """The page of a queued run that has no record yet, or None if it is not one."""
        found = _RUN_PAGE.match(request.url.path)
        if found is None or request.method not in ("GET", "HEAD"):
            return None
        repo, run_id = found[1], found[2]
        if not valid_name(repo) or not valid_name(run_id):
            return None
        try:
            entry = actions.queued(self.web.state, run_id)
        except QuireError:
            return None
        if entry is None or entry.repo != repo:
            return None
        trigger = trigger_of(entry)
        return self.web.render("queued.html", entry=entry, trigger=trigger, trigger_repo=repo)

    def no_worker(self) -> str:
        """What the pages say when no worker would start a queued run ('' if one would);
        the same answer for a second."""
        now = time.monotonic()
        if self._no_worker_said is not None and now - self._no_worker_said[0] < NO_WORKER_S:
            return self._no_worker_said[1]
        said = self._no_worker()
        self._no_worker_said = (now, said)
        return said

    def _no_worker(self) -> str:
        if actions.workers_listening(self.web.state) is not False:
            return ""
        url = database_url()
        where = (
            f"the queue database {server_name(url)}"
            if url is not None
            else f"QUIRE_STATE_DIR={self.web.state}"
        )
        return (
            f"no worker is running: queued runs start when one does (quire ci worker, with {where})"
        )

    # --- badges ---

    def badge(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not name.endswith(".svg") or not valid_name(name.removesuffix(".svg")):
            raise NotFound(f"no badge {name!r}: use /badge/<repo>.svg")
        repo = name.removesuffix(".svg")
        branch = request.query_params.get("branch") or None
        status: badge.Status = "unknown"
        if repo in self.web.view.repos():
            status = badge.status_of(self._runs_of(repo), branch)
        # Shown to someone who logged in or sent a token: no shared cache may keep it (with
        # anonymous = "none" it would then show it to anybody).
        shared = "private, " if auth.current.get().user is not None else ""
        return Response(
            badge.svg(status),
            media_type="image/svg+xml",
            headers={"Cache-Control": f"{shared}max-age={badge.MAX_AGE_S}, must-revalidate"},
        )

    def _runs_of(self, repo: str) -> Iterator[IndexedRun]:
        index = self.web.index
        index.sync()
        for number in range(1, 51):  # the newest 5,000 runs at most
            page = index.page(repo=repo, page=number, per_page=100)
            yield from page.runs
            if number >= page.pages:
                return


def _who(identity: Identity) -> str:
    assert identity.user is not None
    return identity.user.name


def _operator(request: Request, sent_csrf: str | None) -> Identity:
    """The identity of an operator allowed to act, or the 401/403 that stops the request."""
    identity = auth.current.get()
    if identity.user is None:
        raise HTTPException(401, "log in as an operator first, or send Authorization: Bearer TOKEN")
    if identity.via == "session":
        _check_origin(request)
        if not csrf_ok(identity, sent_csrf):
            raise HTTPException(
                403, "the CSRF token is missing or wrong: reload the page and try again"
            )
    if not identity.operator:
        raise HTTPException(
            403, f"{identity.user.name} is a viewer: only operators may re-run, cancel or start"
        )
    return identity


def _check_origin(request: Request) -> None:
    """A browser's POST from another site is refused, whatever else it carries."""
    # A browser says where the request comes from here even when its Origin is "null" (a
    # sandboxed frame, a data: URL): our own forms are always same-origin.
    fetched_from = request.headers.get("sec-fetch-site")
    if fetched_from in ("cross-site", "same-site"):
        raise HTTPException(403, f"a request from another site ({fetched_from}) is refused")
    origin = request.headers.get("origin")
    # None: not a browser. "null": Chromium sends that for every form POST of a page served
    # with Referrer-Policy: no-referrer, as ours are. The CSRF token decides then.
    if origin is None or origin == "null":
        return
    if urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"a request from another site ({origin}) is refused")


@contextmanager
def _refusals() -> Iterator[None]:
    """Turns what the service refuses into HTTP answers: 409 (cannot be done to this run
    or ref), 503 (the queue cannot be written now)."""
    try:
        yield
    except (actions.ActionRefused, QueueEntryNotFound) as exc:
        raise HTTPException(409, str(exc)) from exc
    except QueueUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc


def _run_path(request: Request, run_id: str) -> str:
    from quire.web.app import run_url

    return run_url(request.path_params["repo"], run_id)


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, f"a form or request body is at most {MAX_FORM_BYTES} bytes")
    return body


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each)."""
    text = (await _body(request)).decode("utf-8", errors="replace")
    return {key: values[0] for key, values in parse_qs(text, max_num_fields=20).items()}
