"""What a person may ask of the queue besides pushing: re-run a run, run a ref, cancel a run.

The web page's actions and `quire ci cancel` come through here, so each
works the same whoever asks:

    rerun(state, run, by)        the run's revision, ref and executor, queued like a push,
                                 with Trigger(kind="rerun", by, rerun_of)
    run_ref(state, git_dir, ref, by)   a branch or tag of a bare repository with quire's
                                 hook, queued like a push of it, Trigger(kind="manual", by)
    cancel(state, run_id, by)    a queued run is cancelled at once (its record made in
                                 cancelled/); a running one is flagged and its child sent
                                 SIGTERM (recorded cancelled, by whom, when it stops)

Each wakes the workers of `state`. `workers_listening(state)` says whether
any worker waits for runs: on the SQLite queue, a worker of `state` bound to
its wake-up socket; on PostgreSQL, a live worker in the worker registry, on
any machine (None: not knowable now, the database cannot be reached).
"""

from __future__ import annotations

import os
import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from quire.ci.store.records import (
    CancelRequest,
    ExecutorKind,
    RecordUnreadable,
    RunMeta,
    Trigger,
    read_record,
)
from quire.ci.store.runs import RunDir
from quire.errors import QuireError, UsageError
from quire.service.errors import QueueEntryNotFound
from quire.service.queue import Entry, Push, open_queue, queue_path, utc_text
from quire.service.queues import database_url, repository_url
from quire.service.wake import listening, wake_all


class ActionRefused(UsageError):
    """The action cannot be done to this run or ref (a dirty run, no hook, no such branch)."""


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` did: the row as it was, and whether it was still waiting."""

    entry: Entry
    was_queued: bool


def rerun(state: Path, run: RunDir, by: str) -> Entry:
    """Queue `run` again (same revision, ref, executor); raises `ActionRefused`."""
    try:
        meta = read_record(run.path / "meta.yml", RunMeta)
    except RecordUnreadable as exc:
        raise ActionRefused(f"run {run.run_id} cannot be run again: {exc}") from exc
    if meta.dirty:
        raise ActionRefused(
            f"run {run.run_id} ran a working tree's uncommitted changes (--dirty): they are "
            "not in the repository to run again"
        )
    if not meta.ref:
        raise ActionRefused(f"run {run.run_id} ran no branch or tag: nothing to queue it on")
    url = _url_of(state, run.run_id)
    if url is None and database_url() is None and not Path(meta.git_dir).is_dir():
        raise ActionRefused(f"run {run.run_id}'s repository {meta.git_dir} is gone")
    _check_commit(run.run_id, meta)
    trigger = Trigger(kind="rerun", by=by, rerun_of=run.run_id)
    push = Push(meta.git_dir, meta.ref, meta.sha, utc_text(), url or repository_url(meta.git_dir))
    return _enqueue(state, push, trigger, meta.executor)


def _check_commit(run_id: str, meta: RunMeta) -> None:
    """Raises `ActionRefused` when the run's commit left its repository (a force-push, then
    git gc): queued, it would only fail in a worker. A repository on another machine (a
    database's workers) is left to them."""
    from quire.tools import git

    git_dir = Path(meta.git_dir)
    if git_dir.is_dir() and git.commit_of(git_dir, meta.sha) is None:
        raise ActionRefused(
            f"run {run_id}'s commit {meta.sha} is no longer in {git_dir} (a force-push and "
            "git gc take a commit away): run its branch instead"
        )


def _url_of(state: Path, run_id: str) -> str | None:
    """Where the workers fetched run `run_id` from, if the queue still remembers it."""
    if database_url() is None and not os.path.exists(queue_path(state)):
        return None
    with open_queue(state) as queue:
        try:
            return queue.get(run_id).url
        except QueueEntryNotFound:
            return None


# What `git check-ref-format` refuses in a ref name: revision syntax (~ ^ : @{ ..), globs,
# spaces and control characters. Given to `git rev-parse`, those would name a parent, a
# tree, a blob or a reflog entry, queued under a ref that does not exist.
_BAD_IN_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|\Z)|[/.]\Z")


def is_ref_name(ref: str) -> bool:
    """Whether `ref` (refs/...) is a well-formed ref name, as `git check-ref-format` says."""
    return ref != "@" and _BAD_IN_REF.search(ref) is None


def full_ref(git_dir: Path, name: str) -> tuple[str, str]:
    """(refs/heads/NAME or refs/tags/NAME, the object it points at) for a branch or tag
    name (or a full refs/heads/ or refs/tags/ name); raises `ActionRefused`."""
    from quire.tools import git

    if name.startswith("refs/"):
        candidates = [name] if name.startswith(("refs/heads/", "refs/tags/")) else []
    else:
        candidates = [f"refs/heads/{name}", f"refs/tags/{name}"]
    for ref in candidates:
        if name.startswith("-") or not is_ref_name(ref):
            break
        target = git.ref_target(git_dir, ref)
        if target is not None:
            return ref, target
    raise ActionRefused(f"no branch or tag {name!r} in {git_dir}")


def run_ref(state: Path, git_dir: Path, name: str, by: str) -> Entry:
    """Queue a run of branch or tag `name` of the bare repository `git_dir`, as a push of
    it would; raises `ActionRefused` unless it is bare and has quire's hook."""
    from quire.service.install import HOOK, is_ours
    from quire.tools import git

    try:
        repo = git.open_repository(git_dir)
    except QuireError as exc:
        raise ActionRefused(f"the repository {git_dir} cannot be opened: {exc}") from exc
    if not repo.bare:
        raise ActionRefused(
            f"{git_dir} is not a bare repository: runs are started by hand only in the "
            "repositories pushes go to"
        )
    if not is_ours(git.hooks_dir(repo.git_dir) / HOOK):
        raise ActionRefused(
            f"{git_dir} has no quire hook: install it with `quire ci hook install --repo {git_dir}`"
        )
    ref, sha = full_ref(repo.git_dir, name)
    push = Push(str(repo.git_dir), ref, sha, utc_text(), repository_url(str(repo.git_dir)))
    return _enqueue(state, push, Trigger(kind="manual", by=by), None)


def _enqueue(state: Path, push: Push, trigger: Trigger, executor: ExecutorKind | None) -> Entry:
    with open_queue(state) as queue:
        (entry,) = queue.enqueue([push], trigger, None if executor is None else executor.value)
    wake_all(state)
    return entry


def cancel(state: Path, run_id: str, by: str, *, repo: str | None = None) -> Cancelled:
    """Cancel the queued or running run `run_id` (or a unique prefix of it), recorded as
    asked by `by`; raises `QueueEntryNotFound` (also when it is not of `repo`, if given)."""
    from quire.ci.store.liveness import is_alive
    from quire.service import outcome as outcomes

    if database_url() is None and not os.path.exists(queue_path(state)):
        raise QueueEntryNotFound(f"no run {run_id!r}: the queue is empty")
    with open_queue(state) as queue:
        found = queue.find_active(run_id)
        if repo is not None and found.repo != repo:
            raise QueueEntryNotFound(f"no queued or running run {run_id!r} in {repo!r}")
        # Asked before the queue lets go of it: whoever ends the run finds who asked.
        request = outcomes.store_of(found).request_cancel(found.run_id, by)
        entry = queue.cancel(found.run_id, by)
    if entry.state == "queued":
        _record_cancelled_before_start(entry, request)
        return Cancelled(entry, was_queued=True)
    pid = entry.child_pid
    if pid and entry.worker_host == socket.gethostname() and is_alive(pid, entry.child_start):
        os.kill(pid, signal.SIGTERM)
    return Cancelled(entry, was_queued=False)


def _publish_cancelled(entry: Entry) -> None:
    """With a database: the record of a run cancelled before it started goes into the run
    index too, with no worker (none ran it)."""
    url = database_url()
    if url is None:
        return
    from quire.paths import state_dir
    from quire.service.pgindex.publisher import Publisher
    from quire.service.pgindex.writer import IndexWriter

    # Where record_cancelled made the record (this machine's own state directory: `state`
    # is the run index's mirror when the page serves one).
    publisher = Publisher(IndexWriter(url), "", state_dir())
    publisher.track(entry)
    publisher.finish(entry.run_id)
    publisher.close()


def _record_cancelled_before_start(entry: Entry, request: CancelRequest) -> None:
    """A queued run never starts: its record (in cancelled/) and its note are made here."""
    from quire.service import outcome as outcomes
    from quire.service.worker import write_note

    run = outcomes.record_cancelled(entry, request)
    if run is not None:
        _publish_cancelled(entry)
    result = outcomes.Outcome(
        outcomes.CANCELLED,
        "cancelled",
        f"cancelled by {request.by} before it started",
        outcomes.commit_of(entry),
        duration_s=0.0,
        recorded=run is not None,
        cancelled_by=request.by,
    )
    write_note(entry, result)


def queued(state: Path, run_id: str) -> Entry | None:
    """The queue's row of `run_id` if it is queued or running, without creating a queue."""
    if database_url() is None and not os.path.exists(queue_path(state)):
        return None
    with open_queue(state) as queue:
        try:
            entry = queue.get(run_id)
        except QueueEntryNotFound:
            return None
    return entry if entry.state != "done" else None


def workers_listening(state: Path) -> bool | None:
    """Whether a worker waits for runs of `state`: on the SQLite queue, one listening on
    its wake-up socket; on PostgreSQL, a live worker in the registry (`quire ci workers`),
    None when the database cannot be asked now."""
    url = database_url()
    if url is None:
        return listening(state) > 0
    from quire.service.errors import QueueCorrupt, QueueUnavailable

    try:
        with open_queue(state) as queue:
            return len(queue.workers()) > 0
    except (QueueUnavailable, QueueCorrupt):
        return None  # the page says nothing rather than something wrong
