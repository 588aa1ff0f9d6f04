"""The `quire` command line, and the one error boundary of quire.

Every command body runs inside `_guarded`: a `QuireError` becomes
`error: <message>` on stderr and its exit code; Ctrl-C becomes exit 130;
anything else is a bug (exit 70), shown as one line unless `--debug` asks
for the traceback. Heavy modules are imported inside the commands so that
`quire --help` starts fast.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer

if TYPE_CHECKING:
    from typer._click import Command

    from quire.ci.run.jobhost import JobHost
    from quire.ci.store.records import Trigger

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    help="quire: run a repository's CI pipeline (.quire/ci.py) on this machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion; typer only imports its completion
    # code when one of them is given, so --help stays fast.
    add_completion=True,
    # Plain click help: rich's help renderer doubles the start-up time of --help.
    rich_markup_mode=None,
)
ci = typer.Typer(
    help="Run, validate and inspect CI pipelines.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(ci, name="ci")

_debug = False


def _guarded(func: Callable[P, int | None]) -> Callable[P, None]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        from quire.errors import ExitCode, QuireError

        try:
            code = func(*args, **kwargs) or 0
        except QuireError as exc:
            _error(str(exc))
            code = exc.exit_code
        except BrokenPipeError:
            # The reader went away (`quire ci show | head`): stop quietly, no error.
            from quire.cli.console import silence_closed_streams

            silence_closed_streams()
            code = ExitCode.ok
        except KeyboardInterrupt:
            _error("interrupted")
            code = ExitCode.interrupted
        except OSError as exc:
            code = _environment_or_internal(exc)
        except Exception as exc:
            code = _internal(exc)
        raise typer.Exit(code)

    return wrapper


def _environment_or_internal(exc: OSError) -> int:
    """A full disk (or quota) wherever quire writes is the machine's state, not a bug:
    exit 3 with the message every command gives for it."""
    from quire.errors import StoreWriteFailed

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return _internal(exc)
    problem = StoreWriteFailed.of(exc.filename or "a file", exc)
    _error(str(problem))
    return problem.exit_code


def _internal(exc: Exception) -> int:
    from quire.errors import ExitCode

    if _debug:
        raise exc
    _error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
    return ExitCode.internal


def _error(message: str) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):
        sys.stdout.flush()  # what came before goes first, if anyone still reads it
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _print_version(value: bool) -> None:
    # Eager: runs while the options are parsed, before click asks for a subcommand.
    if value:
        from quire import __version__

        typer.echo(f"quire {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of internal errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    global _debug
    _debug = debug


class ExecutorChoice(StrEnum):
    host = "host"
    docker = "docker"


DIRTY_HELP = (
    "Use the working tree as it is: uncommitted changes and untracked files (never ignored "
    "ones), on top of HEAD."
)
RepoOption = Annotated[
    Path,
    typer.Option(
        "--repo", help="The repository (normal or bare).", show_default="current directory"
    ),
]


@ci.command("run")
@_guarded
def run_command(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Jobs to run, with every job they need (default: all). A revision as the "
            "first word still works: `quire ci run main lint`.",
            metavar="[REV] [JOB]...",
        ),
    ] = None,
    rev: Annotated[
        str | None, typer.Option("--rev", help="Revision to run.", show_default="HEAD")
    ] = None,
    repo: RepoOption = Path(),
    executor: Annotated[
        ExecutorChoice, typer.Option("--executor", help="Where commands run.")
    ] = ExecutorChoice.host,
    keep_workspace: Annotated[
        bool, typer.Option("--keep-workspace", help="Keep the materialized tree after the run.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")] = False,
    dirty: Annotated[bool, typer.Option("--dirty", help=DIRTY_HELP)] = False,
    jobs_at_once: Annotated[
        str,
        typer.Option(
            "--jobs",
            "-j",
            help="How many jobs may run at the same time: a number, or `auto` (one per CPU).",
        ),
    ] = "1",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON summary on stdout; the run's output to stderr."
        ),
    ] = False,
    # For the push worker, which runs a queued push as a child `quire ci run`.
    ref: Annotated[str | None, typer.Option("--ref", hidden=True)] = None,
    pushed_at: Annotated[str | None, typer.Option("--pushed-at", hidden=True)] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", hidden=True)] = None,
    url: Annotated[str | None, typer.Option("--url", hidden=True)] = None,
    trigger: Annotated[str | None, typer.Option("--trigger", hidden=True)] = None,
) -> int:
    """Run the pipeline of REV (HEAD), or only some of its jobs.

    Exit 0 complete, 1 a job failed, 2 bad input, 3 environment, 70 internal error,
    130 interrupted.
    """
    # A host run's job host starts before quire imports the run's machinery (~0.1 s), so
    # its interpreter's start-up costs the run next to nothing. (A docker run's waits for
    # the config: it may be sandboxed.)
    from quire.ci.run.jobhost import JobHost

    early = JobHost.start() if executor == ExecutorChoice.host else None
    try:
        return _run_command(
            rev,
            targets,
            repo,
            executor,
            dirty,
            jobs_at_once,
            keep_workspace,
            ref,
            pushed_at,
            run_id,
            url,
            quiet,
            as_json,
            early,
            trigger,
        )
    finally:
        if early is not None:
            early.close()


def _run_command(
    rev: str | None,
    targets: list[str] | None,
    repo: Path,
    executor: ExecutorChoice,
    dirty: bool,
    jobs_at_once: str,
    keep_workspace: bool,
    ref: str | None,
    pushed_at: str | None,
    run_id: str | None,
    url: str | None,
    quiet: bool,
    as_json: bool,
    early: JobHost | None,
    trigger: str | None = None,
) -> int:
    from quire.ci.run.orchestrator import RunRequest, run
    from quire.ci.store.records import ExecutorKind
    from quire.cli.console import JobTagged, PipeSafe, PlainReporter, make_reporter
    from quire.errors import UsageError

    revision, jobs = _revision_and_jobs(repo, rev, list(targets or ()))
    request = RunRequest(
        repo_path=repo,
        revision=revision,
        jobs=tuple(jobs),
        dirty=dirty,
        concurrency=_concurrency(jobs_at_once),
        executor=ExecutorKind(executor.value),
        keep_workspace=keep_workspace,
        ref=ref,
        pushed_at=_parse_time(pushed_at),
        run_id=run_id,
        url=url,
        trigger=_parse_trigger(trigger),
    )
    shown = PlainReporter(quiet=quiet, out=sys.stderr.buffer) if as_json else None
    screen = shown or make_reporter(quiet=quiet)
    tagged = JobTagged(screen) if request.concurrency > 1 else screen
    reporter = PipeSafe(tagged)  # a closed pipe stops the screen only
    try:
        outcome = run(request, reporter, host=early)
    except UsageError as exc:
        if rev is None and jobs and f"no job {jobs[0]!r}" in str(exc):
            # The first word was taken for a job because it names no commit: say both.
            raise UsageError(f"no revision {jobs[0]!r} in the repository, and {exc}") from exc
        raise
    finally:
        reporter.close()  # the live area goes, however the run ended
    if keep_workspace and outcome.workspace is not None:
        typer.echo(f"workspace kept: {outcome.workspace}", err=as_json)
    if as_json:
        typer.echo(outcome.to_json())
    if outcome.nothing_to_run and quiet:  # the worker's child: its output is the message
        typer.echo(f"quire: {outcome.nothing_to_run}", err=True)
    if outcome.error:
        _error(outcome.error)
    return outcome.exit_code


def _concurrency(text: str) -> int:
    from quire.errors import UsageError

    if text == "auto":
        return os.cpu_count() or 1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UsageError(f"--jobs {text!r}: give a number of jobs (1 or more) or `auto`")


def _revision_and_jobs(repo: Path, rev: str | None, targets: list[str]) -> tuple[str, list[str]]:
    """`--rev`, or a first word that names a commit (as older versions took it); the rest
    are job ids."""
    if rev is not None or not targets:
        return rev or "HEAD", targets
    from quire.ci.run.loading import names_commit

    if names_commit(repo, targets[0]):
        return targets[0], targets[1:]
    return "HEAD", targets


def _parse_trigger(text: str | None) -> Trigger | None:
    """The worker's `--trigger`: a Trigger's JSON, as the queue keeps it."""
    if text is None:
        return None
    from pydantic import ValidationError

    from quire.ci.store.records import Trigger
    from quire.errors import UsageError

    try:
        return Trigger.model_validate_json(text)
    except ValidationError as exc:
        raise UsageError(
            f"--trigger {text!r}: not a trigger ({exc.error_count()} problems)"
        ) from exc


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    from quire.errors import UsageError

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--pushed-at {text!r}: not an ISO 8601 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@ci.command("validate")
@_guarded
def validate_command(
    rev: Annotated[str, typer.Argument(help="Revision whose ci.py to check.")] = "HEAD",
    repo: RepoOption = Path(),
    dirty: Annotated[bool, typer.Option("--dirty", help=DIRTY_HELP)] = False,
) -> int:
    """Load REV's .quire/ci.py and list its jobs, or every problem with its line (exit 2)."""
    from quire.ci.pipeline import PIPELINE_FILE
    from quire.ci.run.loading import load

    loaded = load(repo, rev, dirty=dirty)
    if dirty:
        rev = "the working tree"
    if loaded.pipeline is None:
        typer.echo(f"no {PIPELINE_FILE} at {rev} ({loaded.revision.sha[:12]}): nothing to run")
        return 0
    pipeline = loaded.pipeline
    typer.echo(f"{PIPELINE_FILE} at {rev} ({loaded.revision.sha[:12]}): {len(pipeline.jobs)} jobs")
    width = max(len(name) for name in pipeline.order)
    for name in pipeline.order:
        defined = pipeline.jobs[name]
        extra = f"  (timeout {defined.timeout:g}s)" if defined.timeout else ""
        typer.echo(f"  {name:<{width}}  <- {', '.join(defined.inputs)}{extra}")
    return 0


@ci.command("jobs")
@_guarded
def jobs_command(
    rev: Annotated[str, typer.Argument(help="Revision whose ci.py to read.")] = "HEAD",
    repo: RepoOption = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> int:
    """List REV's jobs in the order they run, one per line with their inputs."""
    import json

    from quire.ci.run.loading import load

    pipeline = load(repo, rev).pipeline
    jobs = [] if pipeline is None else [pipeline.jobs[name] for name in pipeline.order]
    if as_json:
        listed = [{"id": j.id, "inputs": list(j.inputs), "timeout": j.timeout} for j in jobs]
        typer.echo(json.dumps(listed, indent=2))
        return 0
    width = max((len(defined.id) for defined in jobs), default=0)
    for defined in jobs:
        typer.echo(f"{defined.id:<{width}}  <- {', '.join(defined.inputs)}")
    return 0


@ci.command("reconcile")
@_guarded
def reconcile_command(
    repo: Annotated[
        Path | None,
        typer.Option("--repo", help="Only this repository's runs (default: every repository)."),
    ] = None,
) -> int:
    """Fail orphaned runs, quarantine unreadable ones, remove containers no live run owns."""
    from quire.ci.store.reconcile import reconcile
    from quire.ci.store.runs import store_for
    from quire.errors import DockerUnavailable, ExitCode

    stores = None if repo is None else [store_for(repo)]
    try:
        actions = reconcile(stores)
    except DockerUnavailable as exc:
        actions = reconcile(stores, containers=False)
        typer.echo(f"note: containers not checked: {exc}", err=True)
    for action in actions:
        typer.echo(str(action))
    if not actions:
        typer.echo("nothing to reconcile")
    # Something it could not fix (a full disk) is not done: a script or a timer retries.
    return ExitCode.environment if any(a.kind == "problem" for a in actions) else 0


def _register_history() -> None:
    from quire.cli import history_commands

    ci.command("runs")(_guarded(history_commands.runs_command))
    ci.command("show")(_guarded(history_commands.show_command))
    ci.command("logs")(_guarded(history_commands.logs_command))
    ci.command("artifacts")(_guarded(history_commands.artifacts_command))


_register_history()


def _register_web() -> None:
    from quire.cli import serve_command

    ci.command("serve")(_guarded(serve_command.serve_command))


_register_web()


def _register_accounts() -> None:
    from quire.cli import account_commands as accounts

    accounts.user_app.command("add")(_guarded(accounts.user_add_command))
    accounts.user_app.command("list")(_guarded(accounts.user_list_command))
    accounts.user_app.command("remove")(_guarded(accounts.user_remove_command))
    ci.add_typer(accounts.user_app, name="user")
    accounts.token_app.command("create")(_guarded(accounts.token_create_command))
    accounts.token_app.command("list")(_guarded(accounts.token_list_command))
    accounts.token_app.command("revoke")(_guarded(accounts.token_revoke_command))
    ci.add_typer(accounts.token_app, name="token")


_register_accounts()


def _register_service() -> None:
    from quire.cli import service_commands as service

    hook = service.hook_app
    hook.command("install")(_guarded(service.hook_install_command))
    hook.command("uninstall")(_guarded(service.hook_uninstall_command))
    ci.add_typer(hook, name="hook")
    ci.command("worker")(_guarded(service.worker_command))
    ci.command("queue")(_guarded(service.queue_command))
    ci.command("workers")(_guarded(service.workers_command))
    ci.command("cancel")(_guarded(service.cancel_command))
    service.db_app.command("migrate")(_guarded(service.db_migrate_command))
    ci.add_typer(service.db_app, name="db")


_register_service()


def _register_warm() -> None:
    ci.command("warm")(_guarded(warm_command))


def warm_command() -> int:
    """Keep quire imported and run each `quire` command in a fork of it, until SIGTERM.

    Commands start in a blink while it runs; without it, they run as always.
    Logs to stderr.
    """
    from quire.cli.warm import WarmServer, log_to_stderr
    from quire.paths import state_dir

    log_to_stderr()
    return WarmServer(state_dir()).serve()


_register_warm()


def _register_prune() -> None:
    from quire.cli import prune_command

    ci.command("prune")(_guarded(prune_command.prune_command))


_register_prune()


@functools.cache
def command() -> Command:
    """The click command tree of `app`, each `ci` command built when first used (typer
    builds all 17 in ~25 ms; quire/cli/lazy_tree.py). Once per process."""
    from quire.cli.lazy_tree import command_tree

    return command_tree(app)


def main() -> None:
    """Run the command line in this process (`quire.cli.launch.main` decides where)."""
    command()(prog_name="quire")


if __name__ == "__main__":
    main()
