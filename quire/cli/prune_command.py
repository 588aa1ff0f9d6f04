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
        typer.Option("--repo", help="Only this repository (default: every repository)."),
    ] = None,
) -> int:
    """Remove old runs' records, their image tags and workspaces, leftover workspaces,
    the :latest image of repositories that no longer exist, and (--caches) caches.

    Without --keep or --older-than no run is removed; with both, a run goes when it
    is past the newest N AND older than DAYS. A run in progress is never touched.
    """
    from quire.ci.store.prune import PruneOptions, describe, prune
    from quire.ci.store.runs import store_for
    from quire.config import load_config

    options = PruneOptions(
        keep=keep,
        older_than=None if older_than is None else timedelta(days=older_than),
        caches=caches,
        dry_run=dry_run,
        ceiling_s=load_config().docker.ceiling,
    )
    stores = None if repo is None else [store_for(repo)]
    report = prune(stores, options)
    for line in describe(report, dry_run=dry_run):
        typer.echo(line)
    return 0
