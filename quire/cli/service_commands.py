"""`quire ci hook install | uninstall`, `quire ci worker`, `quire ci queue`, `quire ci cancel`,
`quire ci workers`, `quire ci db migrate`.

CI on push: the hook queues a run per pushed branch or tag in the state
directory's queue; a worker runs them. Heavy modules are imported inside
the commands: `quire --help` must stay fast.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from datetime import datetime

    from quire.service.queue import Entry
    from quire.service.registry import WorkerInfo

hook_app = typer.Typer(
    help="Install or remove the post-receive hook that queues CI runs on push.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

BareRepoOption = Annotated[
    Path,
    typer.Option("--repo", help="The repository pushes go to (usually bare)."),
]


class WorkerExecutor(StrEnum):
    host = "host"
    docker = "docker"


def hook_install_command(
    repo: BareRepoOption,
    branches: Annotated[
        list[str] | None,
        typer.Option(
            "--branches",
            help="Run only pushes to branches matching this glob (repeatable); "
            "a glob starting with refs/ matches full ref names (refs/tags/v*). "
            "Default: every branch and tag.",
        ),
    ] = None,
) -> int:
    """Install a post-receive hook in REPO that queues a run per pushed branch or tag."""
    from quire.paths import state_dir
    from quire.service.install import install
    from quire.service.queues import database_url, server_name

    state = state_dir()
    plan = install(repo, branches or [], state)
    verb = "updated" if plan.replaced else "installed"
    typer.echo(f"{verb} {plan.hook}")
    if plan.chained:
        typer.echo(f"the earlier hook is kept as {plan.chained} and runs after quire's")
    url = database_url()
    if url is None:
        typer.echo(f"pushes queue runs in {state.resolve()}: start `quire ci worker` to run them")
    else:
        # The hook reads the database anew at each push, in git's environment, not ours.
        typer.echo(
            f"pushes queue runs in the database {server_name(url)} when git runs the hook "
            "with QUIRE_DATABASE_URL or `[server] database` set (docs/scale-out.md): "
            "start `quire ci worker` with the same database to run them"
        )
    return 0


def hook_uninstall_command(repo: BareRepoOption) -> int:
    """Remove quire's post-receive hook from REPO (an earlier hook it kept comes back)."""
    from quire.service.install import uninstall

    plan = uninstall(repo)
    if plan is None:
        typer.echo(f"no quire hook in {repo}: nothing to do")
    elif plan.chained:
        typer.echo(f"removed quire's hook; {plan.hook} is the earlier hook again")
    else:
        typer.echo(f"removed {plan.hook}")
    return 0


def worker_command(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-j", min=1, help="Runs at the same time.")
    ] = 1,
    executor: Annotated[
        WorkerExecutor,
        typer.Option(
            "--executor",
            help="Where commands run (host or docker), unless the config file sets it "
            "for the repository.",
        ),
    ] = WorkerExecutor.host,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            min=3,
            help="With a PostgreSQL queue: seconds a claimed run stays this worker's unless "
            "renewed (it renews at each poll: every 5 s, or a third of the lease if shorter); "
            "after that, another worker takes it over.",
        ),
    ] = 30.0,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The name `quire ci workers` lists this worker under and, with a "
            "PostgreSQL queue, claims runs under (default: the host name).",
        ),
    ] = None,
) -> int:
    """Run queued pushes in the foreground until SIGTERM/SIGINT (then exit 0).

    Logs to stderr. Several workers may share one queue: the state directory's, or, with
    QUIRE_DATABASE_URL or `[server] database`, a PostgreSQL queue shared by many machines.
    """
    import socket

    from quire.paths import state_dir
    from quire.service.worker import Worker, WorkerSettings

    _log_to_stderr()
    settings = WorkerSettings(
        state=state_dir(),
        concurrency=concurrency,
        executor=executor.value,
        lease_s=lease,
        name=name or socket.gethostname(),
    )
    return Worker(settings).serve()


db_app = typer.Typer(
    help="The PostgreSQL database that holds a shared queue (QUIRE_DATABASE_URL).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def db_migrate_command() -> int:
    """Create or upgrade the queue's tables in the configured PostgreSQL database."""
    from quire.errors import UsageError
    from quire.service.queues import database_url, server_name

    url = database_url()
    if url is None:
        raise UsageError(
            "no database configured: set QUIRE_DATABASE_URL=postgresql://... or "
            '[server] database = "postgresql://..." in the config file'
        )
    from quire.service.pgschema import migrate

    before, after = migrate(url)
    if before == after:
        typer.echo(f"{server_name(url)}: schema version {after}, up to date")
    else:
        typer.echo(f"{server_name(url)}: schema version {before} -> {after}")
    return 0


def _log_to_stderr() -> None:
    import logging
    import time

    handler = logging.StreamHandler()
    formatter = logging.Formatter("%(asctime)s quire-worker: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger = logging.getLogger("quire.worker")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def queue_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    finished: Annotated[
        int, typer.Option("--finished", min=0, help="Also show the last N finished runs.")
    ] = 0,
) -> int:
    """List queued and running runs, oldest first."""
    from quire.paths import state_dir
    from quire.service.queue import open_queue, queue_path
    from quire.service.queues import database_url

    if database_url() is None and not os.path.exists(queue_path(state_dir())):
        entries: list[Entry] = []
    else:
        with open_queue(state_dir()) as queue:
            entries = queue.active() + (queue.recent(finished) if finished else [])
    if as_json:
        typer.echo(json.dumps([e.shown() for e in entries], indent=2))
        return 0
    if not entries:
        typer.echo("the queue is empty")
        return 0
    header = ("id", "state", "repo", "ref", "sha", "pushed", "attempt", "detail")
    rows: list[tuple[str, ...]] = [header, *(_row(e) for e in entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def workers_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> int:
    """List the live workers: name, host, pid, since when, last seen, what they run."""
    from datetime import UTC, datetime

    from quire.paths import state_dir
    from quire.service.queue import open_queue, queue_path
    from quire.service.queues import database_url

    if database_url() is None and not os.path.exists(queue_path(state_dir())):
        workers: list[WorkerInfo] = []  # no queue yet: no worker ever started here
    else:
        with open_queue(state_dir()) as queue:
            workers = queue.workers()
    if as_json:
        typer.echo(json.dumps([w.model_dump(mode="json") for w in workers], indent=2))
        return 0
    if not workers:
        typer.echo("no worker is running (start one with `quire ci worker`)")
        return 0
    now = datetime.now(UTC)
    header = ("name", "host", "pid", "since", "seen", "runs", "running")
    rows: list[tuple[str, ...]] = [header]
    for worker in workers:
        seen = "-" if worker.seen_at is None else f"{_ago(now, worker.seen_at)} ago"
        rows.append(
            (
                worker.name,
                worker.host,
                str(worker.pid),
                worker.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                seen,
                f"{len(worker.running)}/{worker.concurrency}",
                " ".join(worker.running) or "idle",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _ago(now: datetime, then: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _row(entry: Entry) -> tuple[str, ...]:
    if entry.state == "running":
        detail = f"{entry.executor or '?'}, pid {entry.child_pid or '?'}"
        detail += ", cancelling" if entry.cancel else ""
    elif entry.state == "done":
        detail = (entry.outcome or "?") + (f" ({entry.reason})" if entry.reason else "")
    else:
        detail = f"retry of {entry.retry_of}" if entry.retry_of else ""
    ref = entry.ref.removeprefix("refs/heads/")
    pushed = entry.pushed_at[:19].replace("T", " ")
    state = entry.state if entry.state != "done" else "finished"
    return (
        entry.run_id,
        state,
        entry.repo,
        ref,
        entry.sha[:12],
        pushed,
        str(entry.attempt),
        detail,
    )


def cancel_command(
    run: Annotated[str, typer.Argument(help="A queued or running run's id, or a unique prefix.")],
) -> int:
    """Remove a queued run from the queue, or interrupt a running one; either way it is
    recorded as cancelled, by you, now."""
    import getpass

    from quire.paths import state_dir
    from quire.service.actions import cancel

    done = cancel(state_dir(), run, getpass.getuser())
    entry = done.entry
    if done.was_queued:
        typer.echo(f"cancelled queued run {entry.run_id} ({entry.repo} {entry.ref})")
        return 0
    typer.echo(
        f"interrupting running run {entry.run_id} ({entry.repo} {entry.ref}): "
        "it is recorded as cancelled when it has stopped"
    )
    return 0
