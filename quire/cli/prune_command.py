"""`quire ci prune`: remove old runs and what they leave behind (quire.ci.store.prune)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer


def prune_command(
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep", min=0, metavar="N", help="Keep the newest N finished runs of each repository."
        ),
    ] = None,
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than", min=0, metavar="DAYS", help="Remove only runs older than DAYS."
        ),
    ] = None,
    caches: Annotated[
        bool, typer.Option("--caches", help="Also remove the repositories' cache volumes.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would go; change nothing.")
    ] = False,
    repo: Annotated[
        Path | None,
        typer.Option(
            "--repo",
            help="The repository (normal or bare).",
            show_default="current directory",
        ),
    ] = None,
    every: Annotated[
        bool,
        typer.Option("--all", help="Every repository of the state directory, not just one."),
    ] = False,
) -> int:
    """Remove old runs' records, their image tags and workspaces, leftover workspaces,
    the :latest image of repositories that no longer exist, and (--caches) caches.

    Without --keep or --older-than no run is removed; with both, a run goes when it
    is past the newest N AND older than DAYS. A run in progress is never touched.
    Like every other command it means the current repository (or --repo); --all
    means every repository of the state directory.
    """
    from quire.ci.store.prune import PruneOptions, describe, prune
    from quire.ci.store.runs import RunStore, store_for
    from quire.config import load_config
    from quire.errors import NotARepository, UsageError

    if every and repo is not None:
        raise UsageError("give --repo PATH or --all, not both")
    stores: list[RunStore] | None = None
    if not every:
        try:
            stores = [store_for(repo or Path())]
        except NotARepository as exc:
            if repo is not None:
                raise
            raise UsageError(
                f"{exc}; `quire ci prune --all` prunes every repository of the state directory"
            ) from exc

    options = PruneOptions(
        keep=keep,
        older_than=None if older_than is None else timedelta(days=older_than),
        caches=caches,
        dry_run=dry_run,
        ceiling_s=load_config().docker.ceiling,
    )
    report = prune(stores, options)
    for line in describe(report, dry_run=dry_run):
        typer.echo(line)
    if not dry_run:
        _unpublish([r.target.rsplit("/", 1)[-1] for r in report.removed if r.kind == "run"])
    return 0


def _unpublish(run_ids: list[str]) -> None:
    """With a database: the pruned runs leave the run index too (readers drop their copies)."""
    from quire.service.queues import database_url

    url = database_url()
    if url is None or not run_ids:
        return
    from quire.paths import state_dir
    from quire.service.pgindex.writer import IndexWriter

    writer = IndexWriter(url)
    try:
        gone = writer.prune(run_ids, str(state_dir()))
    finally:
        writer.close()
    typer.echo(f"removed {gone} run{'' if gone == 1 else 's'} from the run index")
