"""`quire ci prune`: old runs' records and what they leave behind, never a live run.

What goes, per repository of the state directory (or the one asked for):

- finished runs (complete/ and failed/) past the criteria given: `keep` (the
  newest N stay) and `older_than` (only runs started longer ago than that);
  with both, a run goes only if it meets both; with neither, no run goes;
- their workspaces, and leftover workspaces (under the cache directory) of
  runs the store no longer has;
- image tags `quire-ci/<repo>:<run-id>` of runs that are over (tags of runs
  the store does not know only once no run could still use them: older than
  the container ceiling), and `quire-ci/<repo>:latest` when the repository
  the runs were recorded for no longer exists;
- with `caches`, the repository's cache volumes (`quire-cache-<repo>-<name>`).

Never touched: a pending/active run whose runner lives (`owner_alive`), its
workspace, its image tags, its repository's caches and `:latest`. A
pending/active run whose runner is gone is `quire ci reconcile`'s (it may
have processes to end first): prune only says so.

Workspaces are listed before the runs are read, so that a run starting in
between is never mistaken for a leftover (its record exists before its
workspace). docker is optional: without an engine, records and workspaces
are pruned and the report says images and caches were not checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from quire.ci.store.reconcile import all_stores, owner_alive
from quire.ci.store.records import RecordUnreadable, RunMeta, read_record
from quire.ci.store.runs import FINISHED, RunDir, RunState, RunStore
from quire.errors import DockerUnavailable, QuireError
from quire.paths import state_dir

IN_FLIGHT = (RunState.pending, RunState.active)
DEFAULT_CEILING_S = 6 * 3600


@dataclass(frozen=True)
class PruneOptions:
    """What to prune. `keep`/`older_than` select finished runs; neither selects none."""

    keep: int | None = None
    older_than: timedelta | None = None
    caches: bool = False
    dry_run: bool = False
    # Past this age no run can still use an image tag the store does not know.
    ceiling_s: int = DEFAULT_CEILING_S
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Removal:
    """One thing prune removed (or would remove): `size` in bytes, None if unknown."""

    kind: str  # run | workspace | image | cache
    target: str
    detail: str
    size: int | None = None


@dataclass
class PruneReport:
    removed: list[Removal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what stayed, and why

    @property
    def freed(self) -> int:
        return sum(removal.size or 0 for removal in self.removed)


@dataclass
class _Repo:
    """One repository's runs as prune sees them, read once."""

    store: RunStore
    workspaces: list[str]  # run ids with a directory under the cache dir, listed first
    runs: list[RunDir]
    live: set[str]
    orphaned: set[str]
    git_dir: str | None

    @property
    def known(self) -> set[str]:
        return {run.run_id for run in self.runs}


def prune(stores: list[RunStore] | None, options: PruneOptions) -> PruneReport:
    """Prune `stores` (default: every repository under the state directory)."""
    report = PruneReport()
    repos = [_read(store) for store in (all_stores() if stores is None else stores)]
    for repo in repos:
        _prune_records(repo, options, report)
    try:
        _prune_docker(repos, options, report, every_repo=stores is None)
    except DockerUnavailable as exc:
        report.notes.append(f"images and caches not checked: {exc}")
    return report


def _read(store: RunStore) -> _Repo:
    root = store.workspace_root
    listed = [e.name for e in root.iterdir() if not e.name.startswith(".")] if root.is_dir() else []
    runs = list(store.runs())
    in_flight = [run for run in runs if run.state in IN_FLIGHT]
    live = {run.run_id for run in in_flight if owner_alive(run)}
    orphaned = {run.run_id for run in in_flight} - live
    return _Repo(store, listed, runs, live, orphaned, _git_dir(runs))


def _git_dir(runs: list[RunDir]) -> str | None:
    """The repository the runs were recorded for (the newest readable meta.yml)."""
    for run in runs:
        try:
            return read_record(run.path / "meta.yml", RunMeta).git_dir
        except RecordUnreadable:
            continue
    return None


def run_started(run_id: str) -> datetime | None:
    """When a run started, from its id (`20261124-163403-849470-...`, UTC)."""
    try:
        return datetime.strptime(run_id[:22], "%Y%m%d-%H%M%S-%f").replace(tzinfo=UTC)
    except ValueError:
        return None


def _age(run_id: str, path: Path, now: datetime) -> timedelta:
    started = run_started(run_id)
    if started is None:  # an id of another shape: the directory's time instead
        try:
            started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError:
            return timedelta(0)
    return now - started


def selected(runs: list[RunDir], options: PruneOptions) -> list[RunDir]:
    """The finished runs (newest first in `runs`) that the criteria remove."""
    if options.keep is None and options.older_than is None:
        return []
    finished = [run for run in runs if run.state in FINISHED]
    chosen = []
    for index, run in enumerate(finished):
        if options.keep is not None and index < options.keep:
            continue
        age = _age(run.run_id, run.path, options.now)
        if options.older_than is not None and age <= options.older_than:
            continue
        chosen.append(run)
    return chosen


def _prune_records(repo: _Repo, options: PruneOptions, report: PruneReport) -> None:
    store = repo.store
    going = selected(repo.runs, options)
    for run in going:
        age = _age(run.run_id, run.path, options.now)
        size = tree_size(run.path) + tree_size(store.workspace_root / run.run_id)
        detail = f"{run.state.value}, {_days(age)} old"
        if not options.dry_run:
            _remove_run(run)
        report.removed.append(Removal("run", f"{store.repo}/{run.run_id}", detail, size))
    gone = {run.run_id for run in going}
    leftovers = [
        run_id for run_id in repo.workspaces if run_id not in repo.known and run_id not in gone
    ]
    for run_id in leftovers:
        path = store.workspace_root / run_id
        size = tree_size(path)
        if not options.dry_run:
            shutil.rmtree(path, ignore_errors=True)
        report.removed.append(Removal("workspace", str(path), "its run is gone", size))
    if gone and not options.dry_run:
        _repoint_latest(store)
    for run_id in sorted(repo.orphaned):
        report.notes.append(
            f"{store.repo}/{run_id}: its runner is gone; `quire ci reconcile` fails it first"
        )
    for run_id in sorted(repo.live):
        report.notes.append(f"{store.repo}/{run_id}: running, left alone")


def _days(age: timedelta) -> str:
    days = age.total_seconds() / 86400
    return f"{days:.0f} days" if days >= 1 else f"{age.total_seconds() / 3600:.1f} hours"


def _remove_run(run: RunDir) -> None:
    """Out of sight first (a dot name, one rename: readers skip it), then deleted; its
    workspace with it."""
    hidden = run.path.with_name(f".pruning-{run.run_id}")
    try:
        os.rename(run.path, hidden)
    except FileNotFoundError:
        return
    shutil.rmtree(hidden, ignore_errors=True)
    shutil.rmtree(run.store.workspace_root / run.run_id, ignore_errors=True)


def _repoint_latest(store: RunStore) -> None:
    """`latest` names the newest run left, or goes when none is."""
    newest = next(store.runs(), None)
    if newest is not None:
        store.update_latest(newest)
        return
    with contextlib.suppress(OSError):
        (store.root / "latest").unlink()


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (links not followed); 0 if it is not there."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# --- docker: image tags and cache volumes --------------------------------------------------------


def _prune_docker(
    repos: list[_Repo], options: PruneOptions, report: PruneReport, *, every_repo: bool
) -> None:
    from quire.tools import docker  # host-only users never pay for it

    images = docker.run_images()
    by_name = {repo.store.repo: repo for repo in repos}
    for image in images:
        repo = by_name.get(image.repository.removeprefix("quire-ci/"))
        if repo is None:
            continue  # not this state dir's: another user's or another store's
        why = _image_goes(image.tag, repo, options)
        if why is None:
            continue
        if options.dry_run:
            report.removed.append(Removal("image", image.name, why))
            continue
        try:
            deleted = docker.remove_image(image.name)
        except DockerUnavailable:
            raise
        except QuireError as exc:
            report.notes.append(f"{image.name} stays: {exc}")
            continue
        layers = "image deleted" if deleted else "untagged, its layers are another tag's"
        report.removed.append(Removal("image", image.name, f"{why}; {layers}"))
    if options.caches:
        _prune_caches(repos, options, report, every_repo=every_repo)


def _image_goes(tag: str, repo: _Repo, options: PruneOptions) -> str | None:
    """Why the tag goes, or None if it stays."""
    if repo.live or repo.orphaned:
        in_use = repo.live | repo.orphaned
        if tag == "latest" or tag in in_use:
            return None
    if tag == "latest":
        gone = repo.git_dir is not None and not os.path.exists(repo.git_dir)
        return f"the repository {repo.git_dir} no longer exists" if gone else None
    if tag in repo.known:
        return "its run is over"
    started = run_started(tag)
    if started is None:
        return None  # not a run id: someone else's tag
    if (options.now - started).total_seconds() <= options.ceiling_s:
        return None  # a run we do not know (another store?) might still start from it
    return "its run is gone"


def _prune_caches(
    repos: list[_Repo], options: PruneOptions, report: PruneReport, *, every_repo: bool
) -> None:
    from quire.tools import docker

    store = str(state_dir())
    volumes = []
    if every_repo:
        volumes = docker.cache_volumes(store)
    else:
        for repo in repos:
            volumes += docker.cache_volumes(store, repo.store.repo)
    busy = {repo.store.repo for repo in repos if repo.live or repo.orphaned}
    for volume in volumes:
        if volume.repo in busy:
            report.notes.append(f"cache {volume.name} stays: a run of {volume.repo} is running")
            continue
        size = _volume_size(volume.mountpoint)
        detail = f"cache {volume.cache!r} of {volume.repo}"
        if not options.dry_run:
            refused = docker.remove_volume(volume.name)
            if refused is not None:
                report.notes.append(f"cache {volume.name} stays: {refused}")
                continue
        report.removed.append(Removal("cache", volume.name, detail, size))


def _volume_size(mountpoint: str) -> int | None:
    """A local engine's volume is a directory here (readable as root); else unknown."""
    from quire.tools import docker

    if docker.engine_host() is not None or not mountpoint or not os.access(mountpoint, os.R_OK):
        return None
    return tree_size(Path(mountpoint))


def describe(report: PruneReport, *, dry_run: bool) -> Iterable[str]:
    """The report as lines for a person: each removal, the notes, the space freed."""
    verb = "would remove" if dry_run else "removed"
    for removal in report.removed:
        size = "" if removal.size is None else f"  {human_size(removal.size)}"
        yield f"{verb} {removal.kind} {removal.target} ({removal.detail}){size}"
    for note in report.notes:
        yield f"note: {note}"
    if not report.removed:
        yield "nothing to prune"
        return
    uncounted = sorted({f"{r.kind}s" for r in report.removed if r.size is None})
    extra = f" (not counted: {', '.join(uncounted)})" if uncounted else ""
    yield f"{'would free' if dry_run else 'freed'} {human_size(report.freed)}{extra}"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
