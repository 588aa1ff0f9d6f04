"""The read-only web app: pages of runs, jobs and logs, live streams and a JSON API.

    GET /                                     runs, newest first (?repo= &state= &page=)
    GET /runs/<repo>                          the same, one repository
    GET /runs/<repo>/<run>                    one run (`latest` redirects to its id)
    GET /runs/<repo>/<run>/jobs/<job>         a job's log: its tail (?before= / ?after= page)
    GET /runs/<repo>/<run>/jobs/<job>/output.txt   every output byte, as plain text
    GET /runs/<repo>/<run>/artifacts/<job>/<name>[/<path>]  a kept file, as a download
    GET /live/runs                            server-sent events: the runs list changed
    GET /live/runs/<repo>/<run>               server-sent events: a run's jobs and output
    GET /api/runs                             the index: {"runs", "total", "page", "per_page"}
    GET /api/runs/<repo>                      = `quire ci runs --json` (?limit=, default 20)
    GET /api/runs/<repo>/<run>                = `quire ci show --json`
    (and the routes of quire/web/actions.py: /login, /logout, actions, /badge/<repo>.svg)

The pages read; the only writes are the actions of quire/web/actions.py
(logging in and out, re-run, cancel, run a ref: POSTs from operators, with a
CSRF token or an API token), under the gate of quire/web/auth.py. Every response
carries a restrictive Content-Security-Policy (scripts and styles from
this server only, no inline code, no framing); every piece of job output
is HTML-escaped by the renderer and everything else by Jinja's autoescape.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quire.ci.store.artifacts import kept_files
from quire.ci.store.records import JobState, JobStatus
from quire.ci.store.runs import FINISHED, RunDir, RunState
from quire.ci.store.views import RunDetails, RunSummary, details
from quire.web import auth, downloads, live, runlog
from quire.web.accounts import AccountStore
from quire.web.actions import Actions
from quire.web.ansi import palette_css
from quire.web.auth import Anonymous, AuthGate, Throttle
from quire.web.index import RunIndex, default_index_path
from quire.web.logview import (
    LogRenderer,
    read_after,
    read_before,
    render_window,
)
from quire.web.lookup import NotFound, StoreView
from quire.web.plaintext import PlainText

HERE = Path(__file__).parent
# Tail of each job shown on a run's page; the job's own page shows more.
RUN_PAGE_TAIL = 64 * 1024
PER_PAGE = 50
# The largest ?page=, ?per_page= or ?limit= accepted (a page past the last is empty).
MAX_NUMBER = 1_000_000
_DIGITS = re.compile(r"[0-9]{1,7}")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every HTTP response (a plain ASGI middleware, so
    streaming responses stream)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


# --- formatting helpers used by the templates ----------------------------------------------------


def when(value: datetime | None) -> str:
    """A UTC time as `2026-05-04 16:20:01Z`, or `-`."""
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def duration(seconds: float | None) -> str:
    """`0.42 s`, `1 m 05 s`, or `-`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} m {secs:02d} s"


def elapsed_text(seconds: float) -> str:
    """Whole seconds, for a clock that ticks (app.js counts the same way): `7 s`,
    `2 m 05 s`, `1 h 02 m`."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} m"


@jinja2.pass_context
def elapsed(context: jinja2.runtime.Context, started: datetime | None) -> Markup:
    """How long something still running has run, as a span app.js keeps ticking.

    A page says it as of `now`; a fragment sent over a live stream has no `now`
    and leaves it to the script, so the fragment does not change every second.
    """
    if started is None:
        return Markup("-")
    now: datetime | None = context.get("now")
    text = elapsed_text((now - started).total_seconds()) if now else ""
    return Markup('<span class="elapsed" data-since="{}">{}</span>').format(
        started.isoformat(), text
    )


def job_status(state: JobState | None, run_finished: bool = False) -> str:
    """A job's status as the pages name it: a job not started yet is `waiting`, or
    `not run` once its run has ended."""
    if state is None or state.status == JobStatus.pending:
        return "not run" if run_finished else "waiting"
    return state.status.value


@dataclass
class JobRow:
    """One row of a run's jobs table: a job that started, or one still to start."""

    job_id: str
    state: JobState | None
    inputs: list[str]
    status: str


def job_rows(run: RunDetails) -> list[JobRow]:
    """The jobs that started, in the order they did, then those of the run's plan that
    have not (yet), each with the inputs the plan gives it."""
    inputs = {planned.job_id: planned.inputs for planned in run.plan}
    ended = run.state in FINISHED
    rows = [
        JobRow(state.job_id, state, inputs.get(state.job_id, []), job_status(state, ended))
        for state in run.jobs
    ]
    started = {state.job_id for state in run.jobs}
    rows += [
        JobRow(planned.job_id, None, planned.inputs, job_status(None, ended))
        for planned in run.plan
        if planned.job_id not in started
    ]
    return rows


def size(count: int) -> str:
    """A byte count for people."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def repo_url(repo: str) -> str:
    return f"/runs/{quote(repo, safe='')}"


def run_url(repo: str, run_id: str) -> str:
    return f"/runs/{quote(repo, safe='')}/{quote(run_id, safe='')}"


def job_url(run: RunSummary | RunDetails, job: str) -> str:
    repo = getattr(run, "repo", "")
    return f"{run_url(repo, run.id)}/jobs/{quote(job, safe='')}"


def branch_of(ref: str | None) -> tuple[str, str] | None:
    """("branch", "main") for refs/heads/main, ("tag", "v1") for refs/tags/v1."""
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref and ref.startswith(prefix):
            return kind, ref[len(prefix) :]
    return None


def is_sha(run: RunSummary) -> bool:
    """Whether the revision a run was asked for is its sha (or an abbreviation of it), as
    for a pushed run, which the worker runs by full sha: then the sha says it all."""
    return bool(run.revision and run.sha and run.sha.startswith(run.revision))


def branch_name(run: RunSummary) -> str:
    """The runs list's branch column: the branch or tag the run was for, else its ref."""
    branch = branch_of(run.ref)
    return branch[1] if branch else run.ref or ""


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        when=when,
        duration=duration,
        elapsed=elapsed,
        job_status=job_status,
        job_rows=job_rows,
        size=size,
        repo_url=repo_url,
        run_url=run_url,
        job_url=job_url,
        artifact_url=lambda run, kept: downloads.artifact_path(run_url(run.repo, run.id), kept),
        kept_files=kept_files,
        is_sha=is_sha,
        branch_name=branch_name,
        static=lambda name: f"/static/{name}",
        pretty=lambda value: json.dumps(value, indent=2, sort_keys=True),
    )
    return env


# --- the application ----------------------------------------------------------------------------


class Web:
    """The pages and streams over one state directory."""

    def __init__(
        self,
        state: Path,
        *,
        index_path: Path | None,
        accounts: AccountStore | None = None,
        throttle: Throttle | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.state = state
        self.clock = clock
        self.view = StoreView(state / "runs")
        self.index = RunIndex(self.view, index_path)
        self.templates = _templates()
        self.accounts = accounts or _accounts(state)
        self.actions = Actions(self, throttle)

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("live", None)
        context.setdefault("me", auth.current.get())  # who is looking: their buttons
        context.setdefault("now", self.clock())
        context.setdefault("times", False)
        html = self.templates.get_template(name).render(state_dir=str(self.state), **context)
        return HTMLResponse(html, status_code=status_code)

    def render_jobs(self, run: RunDetails, job: str | None = None) -> dict[str, str]:
        """What a live page replaces when the records change: the jobs table and the
        run's facts, and with `job` (a job's page) that job's facts and status."""
        parts = {
            "html": self.templates.get_template("_jobs_rows.html").render(run=run),
            "facts": self.templates.get_template("_facts.html").render(
                run=run, branch=branch_of(run.ref)
            ),
        }
        if job is not None:
            row = _row_of(run, job)
            parts["job_facts"] = self.templates.get_template("_job_facts.html").render(row=row)
            parts["job_state"] = row.status
        return parts

    # --- runs list ---

    def _filters(self, request: Request) -> tuple[str | None, RunState | None, int]:
        params = request.query_params
        repo = params.get("repo") or request.path_params.get("repo") or None
        if repo is not None and repo not in self.view.repos():
            raise NotFound(f"no repository {repo!r}")
        state_name = params.get("state") or None
        if state_name is not None and state_name not in RunState.__members__:
            raise HTTPException(400, f"unknown state {state_name!r}")
        page = _positive("page", params.get("page"))
        return repo, RunState(state_name) if state_name else None, page

    def _list_context(self, request: Request) -> dict[str, Any]:
        repo, state, page_number = self._filters(request)
        self.index.sync()
        page = self.index.page(repo=repo, state=state, page=page_number, per_page=PER_PAGE)
        filters = {"repo": repo or "", "state": state.value if state else ""}

        def page_url(number: int) -> str:
            query = {k: v for k, v in {**filters, "page": str(number)}.items() if v}
            return "/?" + urlencode(query)

        return {
            "page": page,
            "repo": repo,
            "state": state.value if state else None,
            "repos": self.view.repos(),
            "states": [s.value for s in RunState],
            "page_url": page_url,
            "query": urlencode({k: v for k, v in filters.items() if v}),
        }

    def runs_page(self, request: Request) -> Response:
        context = self._list_context(request)
        if context["page"].page == 1:  # new runs only ever appear on the first page
            context["live"] = "/live/runs?" + context["query"]
        return self.render("runs.html", **context)

    async def runs_stream(self, request: Request) -> Response:
        context = self._list_context(request)
        rows = self.templates.get_template("_runs_rows.html")

        def poll() -> str:
            self.index.sync()
            page = self.index.page(
                repo=context["repo"],
                state=RunState(context["state"]) if context["state"] else None,
                per_page=PER_PAGE,
            )
            return rows.render(**{**context, "page": page})

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            last = rows.render(**context)
            quiet = 0.0
            while True:
                await anyio.sleep(1.0)
                html = await anyio.to_thread.run_sync(poll)
                if html != last:
                    last, quiet = html, 0.0
                    yield live.sse("runs", {"html": html})
                else:
                    quiet += 1.0
                    if quiet >= live.PING_S:
                        quiet = 0.0
                        yield b": ping\n\n"

        return _event_stream(events())

    # --- one run ---

    def run_page(self, request: Request) -> Response:
        run = self._run(request)
        if request.path_params["run"] == "latest":
            return RedirectResponse(run_url(run.store.repo, run.run_id), status_code=307)
        info = details(run)
        logs = [self._log_tail(run, job) for job in runlog.job_order(run, info.jobs)]
        finished = run.state in FINISHED
        events = runlog.run_events(run.path / "log.jsonl")
        return self.render(
            "run.html",
            run=info,
            branch=branch_of(info.ref),
            logs=logs,
            notes=events.notes,
            build_output=Markup(events.build_html),
            live=None if finished else f"/live{run_url(run.store.repo, run.run_id)}",
            **_times(request),
        )

    def _log_tail(self, run: RunDir, job: str) -> dict[str, Any]:
        path = run.path / "jobs" / job / "log.jsonl"
        try:
            with open(path, "rb") as handle:
                window = read_before(handle, None, RUN_PAGE_TAIL)
        except OSError:
            return {"job": job, "start": 0, "end": 0, "html": ""}
        html = Markup(render_window(window))
        return {"job": job, "start": window.start, "end": window.end, "html": html}

    async def run_stream(self, request: Request) -> Response:
        run = self._run(request)
        job = request.query_params.get("job") or None
        if job is not None:
            self.view.job_dir(run, job)
        try:
            offsets = live.parse_offsets(request.query_params.get("offsets"))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        follower = live.RunFollower(
            self.view, run, lambda info: self.render_jobs(info, job), offsets=offsets, job=job
        )
        return _event_stream(_follow(follower))

    # --- one job ---

    def job_page(self, request: Request) -> Response:
        run = self._run(request)
        job = request.path_params["job"]
        job_dir = self.view.job_dir(run, job)
        before = _offset(request.query_params.get("before"))
        after = _offset(request.query_params.get("after"))
        try:
            with open(job_dir / "log.jsonl", "rb") as handle:
                if after is not None:
                    window = read_after(handle, after)
                    at_tail = read_before(handle, None, 0).end <= window.end
                else:
                    window = read_before(handle, before)
                    at_tail = before is None or before >= read_before(handle, None, 0).end
        except OSError as exc:
            raise NotFound(f"job {job!r} has no log yet") from exc
        html = Markup(LogRenderer().render(window.events))
        active = run.state not in FINISHED
        stream = f"/live{run_url(run.store.repo, run.run_id)}?" + urlencode({"job": job})
        info = details(run)
        return self.render(
            "job.html",
            run=info,
            job=job,
            row=_row_of(info, job),
            window=window,
            at_tail=at_tail,
            html=html,
            live=stream if active and at_tail else None,
            **_times(request),
        )

    def job_output(self, request: Request) -> Response:
        run = self._run(request)
        job_dir = self.view.job_dir(run, request.path_params["job"])
        try:
            text = PlainText(job_dir / "log.jsonl", finished=run.state in FINISHED)
        except OSError as exc:
            raise NotFound("no log yet") from exc
        headers = {} if text.size is None else {"content-length": str(text.size)}
        return StreamingResponse(
            text.stream(), media_type="text/plain; charset=utf-8", headers=headers
        )

    def artifact(self, request: Request) -> Response:
        params = request.path_params
        return downloads.download(self.view, self._run(request), params["job"], params["path"])

    # --- API ---

    def api_runs(self, request: Request) -> Response:
        repo, state, page_number = self._filters(request)
        per_page = min(_positive("per_page", request.query_params.get("per_page"), PER_PAGE), 500)
        self.index.sync()
        page = self.index.page(repo=repo, state=state, page=page_number, per_page=per_page)
        return JSONResponse(
            {
                "runs": [run.model_dump(mode="json") for run in page.runs],
                "total": page.total,
                "page": page.page,
                "per_page": page.per_page,
            }
        )

    def api_repo_runs(self, request: Request) -> Response:
        repo = request.path_params["repo"]
        self.view.store(repo)
        limit = _positive("limit", request.query_params.get("limit"), 20)
        self.index.sync()
        page = self.index.page(repo=repo, per_page=limit)
        fields = set(RunSummary.model_fields)
        return JSONResponse([run.model_dump(mode="json", include=fields) for run in page.runs])

    def api_run(self, request: Request) -> Response:
        return JSONResponse(details(self._run(request)).model_dump(mode="json"))

    # --- plumbing ---

    def _run(self, request: Request) -> RunDir:
        return self.view.run(request.path_params["repo"], request.path_params["run"])

    def ansi_css(self, request: Request) -> Response:
        return Response(PALETTE_CSS, media_type="text/css")

    def not_found(self, request: Request, exc: Exception) -> Response:
        # A run queued but not started has no record yet: its page is its queue row.
        queued = self.actions.queued_page(request)
        if queued is not None:
            return queued
        if request.url.path.startswith(("/api/", "/live/", "/badge/")):
            return JSONResponse({"error": str(exc)}, status_code=404)
        return self.render("error.html", 404, status="Not found", message=str(exc))

    def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})  # e.g. Allow on a 405
        if request.url.path.startswith(("/api/", "/live/", "/badge/")):
            return JSONResponse({"error": exc.detail}, exc.status_code, headers=headers)
        response = self.render(
            "error.html", exc.status_code, status=str(exc.status_code), message=exc.detail
        )
        response.headers.update(headers)
        return response


PALETTE_CSS = palette_css()


def _accounts(state: Path) -> AccountStore:
    from quire.web.accounts import open_accounts

    return open_accounts(state)


async def _follow(follower: live.RunFollower) -> AsyncIterator[bytes]:
    """The events of one follower until its run ends (or the browser goes away)."""
    try:
        yield b"retry: 1000\n\n"
        quiet = 0.0
        while True:
            messages = await anyio.to_thread.run_sync(follower.poll)
            for name, data in messages:
                yield live.sse(name, data)
            if follower.finished:
                return
            quiet = 0.0 if messages else quiet + live.POLL_S
            if quiet >= live.PING_S:
                quiet = 0.0
                yield b": ping\n\n"
            await anyio.sleep(live.POLL_S)
    finally:
        follower.close()


def _event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _times(request: Request) -> dict[str, Any]:
    """Whether log lines show their times (`?times=1`), and the link that flips it
    (app.js flips it in place, without a reload)."""
    shown = request.query_params.get("times") == "1"
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "times"]
    if not shown:
        query.append(("times", "1"))
    return {"times": shown, "times_url": request.url.path + "?" + urlencode(query)}


def _positive(name: str, text: str | None, default: int = 1) -> int:
    """A query parameter that counts from 1; anything else is a 400 naming it.

    Digits only, and at most `MAX_NUMBER`: SQLite takes nothing past 2**63, and
    `int()` alone would also take `-3`, ` 7`, `1_000` and other scripts' digits.
    """
    if not text:
        return default
    value = int(text) if _DIGITS.fullmatch(text) else 0
    if not 1 <= value <= MAX_NUMBER:
        raise HTTPException(400, f"{name} must be a whole number from 1 to {MAX_NUMBER}: {text!r}")
    return value


def _offset(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise HTTPException(400, f"not a byte offset: {text!r}") from exc
    if value < 0:
        raise HTTPException(400, f"not a byte offset: {text!r}")
    return value


def _row_of(run: RunDetails, job: str) -> JobRow:
    found = [row for row in job_rows(run) if row.job_id == job]
    return found[0] if found else JobRow(job, None, [], job_status(None, run.state in FINISHED))


def create_app(
    state: Path,
    *,
    index_path: Path | None = None,
    allowed_hosts: Sequence[str] | None = None,
    accounts: AccountStore | None = None,
    anonymous: Anonymous = "read",
    throttle: Throttle | None = None,
) -> Starlette:
    """The app over the run store in `state`.

    `index_path`: where the runs index lives (default: `web/index.sqlite3` in
    `state`). `allowed_hosts`: Host headers to accept
    (None: any); a server on the loopback interface accepts only loopback
    names, so a web page elsewhere cannot reach it through DNS rebinding.
    `accounts`: who may log in (default: the state directory's); `anonymous`:
    whether visitors who have not logged in may read ("read") or not ("none");
    `throttle`: failed logins so far (tests give it a fake clock).
    """
    web = Web(
        state,
        index_path=index_path or default_index_path(state),
        accounts=accounts,
        throttle=throttle,
    )
    get: Callable[[str, Any], Route] = lambda path, endpoint: Route(  # noqa: E731
        path, endpoint, methods=["GET"]
    )
    routes = [
        get("/", web.runs_page),
        get("/static/ansi.css", web.ansi_css),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        get("/live/runs", web.runs_stream),
        get("/live/runs/{repo}/{run}", web.run_stream),
        get("/api/runs", web.api_runs),
        get("/api/runs/{repo}", web.api_repo_runs),
        get("/api/runs/{repo}/{run}", web.api_run),
        get("/runs/{repo}", web.runs_page),
        get("/runs/{repo}/{run}", web.run_page),
        get("/runs/{repo}/{run}/jobs/{job}", web.job_page),
        get("/runs/{repo}/{run}/jobs/{job}/output.txt", web.job_output),
        *web.actions.routes(),
        get("/runs/{repo}/{run}/artifacts/{job}/{path:path}", web.artifact),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    middleware.append(Middleware(AuthGate, accounts=web.accounts, anonymous=anonymous))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={NotFound: web.not_found, HTTPException: web.http_error},
    )
    app.state.web = web
    return app
