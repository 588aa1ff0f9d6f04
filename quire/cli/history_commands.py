"""`quire ci runs | show | logs | artifacts`: reading the run store back.

RUN is `latest`, a full run id, or any unique prefix of one. `logs` renders
a run's log.jsonl files the way `quire ci run` showed them (base64 chunks
decoded, stdout to stdout, stderr to stderr); `--follow` tails an active
run until it ends.

With a database configured (QUIRE_DATABASE_URL or `[server] database`) they
read the run index, every worker's runs (quire.cli.run_source): a run id is
found in whichever repository has it, and `runs` shows each run's worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from quire.ci.store.records import Trigger
    from quire.ci.store.views import RunSummary
    from quire.cli.run_source import RunSource

RepoOption = Annotated[
    Path,
    typer.Option(
        "--repo", help="The repository (normal or bare).", show_default="current directory"
    ),
]
RunArgument = Annotated[str, typer.Argument(help="`latest`, a run id, or a unique prefix of one.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _source() -> RunSource:
    from quire.cli.run_source import run_source

    return run_source()


# How a run was started, in one word, for `quire ci runs`.
TRIGGER_LABELS = {"push": "push", "schedule": "schedule", "rerun": "re-run", "manual": "by-hand"}


def describe_trigger(trigger: Trigger) -> str:
    """How a run was started, for people: `push`, `schedule 0 3 * * * (due ...)`."""
    if trigger.kind == "schedule":
        due = trigger.due_at.strftime("%Y-%m-%d %H:%M:%S UTC") if trigger.due_at else "?"
        return f"schedule {trigger.schedule} (due {due})"
    if trigger.kind == "rerun":
        by = f" by {trigger.by}" if trigger.by else ""
        return f"re-run of {trigger.rerun_of}{by}"
    if trigger.kind == "manual":
        return f"by hand{f' by {trigger.by}' if trigger.by else ''}"
    return "push"


def _when(summary: RunSummary) -> str:
    return summary.started_at.strftime("%Y-%m-%d %H:%M:%S") if summary.started_at else "-"


def runs_command(
    repo: RepoOption = Path(),
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most N runs.")] = 20,
    as_json: JsonOption = False,
    every: Annotated[
        bool, typer.Option("--all", help="The runs of every repository, not just one.")
    ] = False,
) -> int:
    """List the repository's runs (--all: every repository's), newest first."""
    import json

    from quire.ci.store.views import list_runs, summarize
    from quire.cli.console import format_duration

    source = _source()
    repos: dict[str, str] = {}  # run id -> its repository, with --all
    if every:
        listed = []
        for store in source.stores():
            for run in store.runs():
                repos[run.run_id] = store.repo
                listed.append(run)
        listed.sort(key=lambda run: run.run_id, reverse=True)
        summaries = [summarize(run) for run in listed[:limit]]
    else:
        summaries = list_runs(source.store(repo), limit)
    if as_json:
        dumped = [
            {**s.model_dump(mode="json"), **({"repo": repos[s.id]} if every else {})}
            for s in summaries
        ]
        typer.echo(json.dumps(dumped, indent=2))
        return 0
    if not summaries:
        typer.echo("no runs yet")
        return 0
    # The repository with --all; the worker when runs came from the run index.
    workers = any(s.worker for s in summaries)
    rows = [
        ("id", *(("repo",) if every else ()), "state", "revision", "executor", "trigger")
        + ("started",)
        + (("duration", "worker") if workers else ("duration",))
    ]
    for s in summaries:
        state = s.state_text()
        # A pushed run's revision is its full sha (the worker runs exactly that commit):
        # show the ref it was pushed to instead of the sha twice.
        name = (s.ref or "") if s.revision == s.sha else s.revision
        revision = f"{name} {s.sha[:12]}".strip() if s.sha else "?"
        if s.dirty:
            revision += "+dirty"
        how = TRIGGER_LABELS[s.trigger.kind] if s.trigger else "?"
        rows.append(
            (s.id, *((repos[s.id],) if every else ()), state, revision, s.executor or "?", how)
            + (_when(s), format_duration(s.duration_s))
            + ((s.worker or "-",) if workers else ())
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def show_command(
    run: RunArgument = "latest", repo: RepoOption = Path(), as_json: JsonOption = False
) -> int:
    """Show one run: revision, times, result, and each job's status, error and outputs."""
    import json

    from quire.ci.store.views import details
    from quire.cli.console import format_duration

    _, found = _source().find(repo, run)
    info = details(found)
    if as_json:
        typer.echo(json.dumps(info.model_dump(mode="json"), indent=2))
        return 0
    state = info.state_text()
    if info.cancelled_at is not None:
        state += f" at {info.cancelled_at.strftime('%Y-%m-%d %H:%M:%S')} UTC"
    typer.echo(f"run       {info.id}")
    typer.echo(f"repo      {info.repo}")
    typer.echo(f"state     {state}")
    # A pushed run's revision is its full sha: show it once.
    named = "" if info.revision == info.sha else f"{info.revision} "
    typer.echo(
        f"revision  {named}{info.sha or '?'}"
        + (f" ({info.ref})" if info.ref else "")
        + (" + the working tree's changes (--dirty)" if info.dirty else "")
    )
    typer.echo(f"executor  {info.executor}")
    if info.worker:
        typer.echo(f"worker    {info.worker}")
    if info.trigger is not None:
        # Who asked for a re-run or a run by hand, and when.
        asked = info.pushed_at if info.trigger.kind in ("rerun", "manual") else None
        when = asked.strftime(" at %Y-%m-%d %H:%M:%S UTC") if asked else ""
        typer.echo(f"trigger   {describe_trigger(info.trigger)}{when}")
    typer.echo(f"started   {_when(info)}   duration {format_duration(info.duration_s)}")
    if info.container:
        short_id = (info.container.container_id or "-")[:12]
        typer.echo(f"container {short_id}  image {info.container.image_tag}")
    if info.error:
        typer.echo(f"error     {info.error}")
    if info.problem:
        typer.echo(
            f"warning: some records of run {info.id} cannot be read: {info.problem}", err=True
        )
    typer.echo(f"records   {info.path}")
    if info.notifications is not None:
        for delivery in info.notifications.deliveries:
            tries = len(delivery.attempts)
            last = delivery.attempts[-1].detail if delivery.attempts else "not tried yet"
            typer.echo(
                f"notify    {delivery.target} ({delivery.event}): {delivery.state} after "
                f"{tries} attempt{'s' if tries != 1 else ''}: {last}"
            )
    for job in info.jobs:
        typer.echo(f"\n  {job.job_id}: {job.status.value} in {format_duration(job.duration_s)}")
        if job.error or job.skip_reason:
            typer.echo(f"    {job.error or job.skip_reason}")
        for key, value in job.outputs.items():
            typer.echo(f"    {key} = {json.dumps(value)}")
        for item in job.artifacts:
            typer.echo(f"    artifact {item.relative}  {_size(item.size)}  sha256:{item.sha256}")
    return 0


def _size(count: int) -> str:
    from quire.ci.vocabulary import format_size

    return format_size(count)


def artifacts_command(
    run: RunArgument = "latest",
    job: Annotated[str | None, typer.Argument(help="Only this job's artifacts.")] = None,
    repo: RepoOption = Path(),
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Copy them into DIR/<job>/<name> (each file's sha256 checked on the way).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> int:
    """List what a run's jobs kept with rt.artifact (name, size, sha256), or copy it out.

    Artifacts live in the run's directory (`quire ci show` prints it) under
    artifacts/<job>/<name>, and go with the run when it is pruned.
    """
    import json

    from quire.ci.store import artifacts
    from quire.ci.store.views import details
    from quire.errors import RunNotFound

    _, found = _source().find(repo, run)
    info = details(found)
    if job is not None and job not in {state.job_id for state in info.jobs}:
        raise RunNotFound(f"run {found.run_id} has no job {job!r}")
    kept = artifacts.kept_files(info.jobs, job)
    if out is not None:
        for item in kept:
            artifacts.copy_out(found.path, item, out)
        typer.echo(f"{len(kept)} file(s) copied to {out}")
        return 0
    if as_json:
        rows = [{"job": k.job, **k.file.model_dump(mode="json")} for k in kept]
        typer.echo(json.dumps(rows, indent=2))
        return 0
    if not kept:
        typer.echo(f"run {found.run_id} kept no artifacts")
        return 0
    table = [("job", "artifact", "size", "sha256")]
    table += [(k.job, k.file.relative, _size(k.file.size), k.file.sha256) for k in kept]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def logs_command(
    run: RunArgument = "latest",
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    repo: RepoOption = Path(),
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")
    ] = False,
    split_streams: Annotated[
        bool,
        typer.Option(
            "--split-streams",
            help="The jobs' stderr to stderr (by default both streams go to stdout, in order).",
        ),
    ] = False,
    timestamps: Annotated[
        bool,
        typer.Option(
            "--timestamps", "-t", help="Begin each line with the time it was written (UTC)."
        ),
    ] = False,
) -> int:
    """Print a run's output as it was shown live (optionally one job, optionally following).

    The jobs' stdout and stderr both go to stdout, in the order they were written, so
    `| grep` finds what a test runner wrote to stderr; --split-streams keeps them apart.
    With --follow, end with the run's outcome and exit with the run's exit code.
    """
    from quire.ci.store import views
    from quire.ci.store.runs import FINISHED
    from quire.cli.console import make_reporter
    from quire.cli.timestamps import Timestamped
    from quire.errors import RunNotFound

    source = _source()
    store, found = source.find(repo, run)
    # A run still going may yet start the job; a finished one never will.
    finished = found.state in FINISHED
    if job is not None and not (found.path / "jobs" / job).is_dir() and (finished or not follow):
        raise RunNotFound(f"run {found.run_id} has no job {job!r}")
    shown = make_reporter(quiet=False, merged=not split_streams)
    reporter = Timestamped(shown) if timestamps else shown
    try:
        if follow:
            with source.following():  # the run index's mirror grows while we read it
                outcome, notes = views.follow(
                    store,
                    found.run_id,
                    job,
                    reporter.handle,
                    alive=source.liveness(),
                    gone=source.gone(),
                )
            reporter.handle(outcome)
        else:
            notes = views.replay(found, job, reporter.handle)
    finally:
        reporter.close()
    for note in notes:  # to stderr: stdout stays exactly the job's output and headers
        typer.echo(f"note: {note}", err=True)
    # Following a run ends like the run did: its exit code.
    return outcome.result.exit_code if follow else 0
