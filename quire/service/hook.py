"""The post-receive hook's work: queue one run per pushed branch or tag, wake a worker, return.

git runs the hook after the refs are updated, with one line per ref on
stdin (`<old-sha> <new-sha> <ref>`) and the repository as GIT_DIR. The
installed script runs `python -I -S` on this module's `main`, with the
state directory and ref patterns it was installed with as arguments.

It must add next to nothing to a push, so this path imports only the
standard library's cheap corner (no pathlib, typing or re), `quire.errors`
and the queue and wake modules (no typer, pydantic, plumbum or yaml). It never fails the push:
any problem (disk full, a damaged queue) becomes a warning to the pusher.
"""

from __future__ import annotations

import os
import sys

from quire.service.queue import Push, open_queue, utc_text
from quire.service.queues import database_url, repository_url

TYPE_CHECKING = False  # typing, pathlib and re cost the hook milliseconds: none here
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TextIO

ZERO = frozenset("0")
DEFAULT_REFS = ("refs/heads/", "refs/tags/")


def wanted(ref: str, patterns: Sequence[str]) -> bool:
    """Whether a pushed `ref` gets a run.

    No patterns: every branch and tag. A pattern starting with `refs/`
    matches the full ref name (`refs/tags/v*`); any other matches branch
    names (`main`, `release/*`). `*` matches any characters, `/` included.
    """
    if not patterns:
        return ref.startswith(DEFAULT_REFS)
    import fnmatch  # only when there are patterns: the hook's start-up time counts

    for pattern in patterns:
        if pattern.startswith("refs/"):
            if fnmatch.fnmatchcase(ref, pattern):
                return True
        elif ref.startswith("refs/heads/") and fnmatch.fnmatchcase(
            ref.removeprefix("refs/heads/"), pattern
        ):
            return True
    return False


def parse_updates(text: str) -> list[tuple[str, str]]:
    """(new sha, ref) of each updated ref on the hook's stdin; deletions are left out."""
    updates = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        _old, new, ref = fields
        if set(new) <= ZERO:
            continue  # a deleted ref: nothing to run
        updates.append((new, ref))
    return updates


def queue_pushes(state: str, git_dir: str, updates: Sequence[tuple[str, str]], out: TextIO) -> int:
    """Queue `updates` and wake the workers, reporting to the pusher on `out`.

    Never raises: a run that could not be queued is a warning with what to do.
    """
    if not updates:
        return 0
    pushed_at = utc_text()
    try:
        url = repository_url(git_dir)
        pushes = [Push(git_dir, ref, sha, pushed_at, url) for sha, ref in updates]
        queued, live, database = _enqueue(state, pushes)
    except Exception as exc:  # the push has happened: say what was not queued, never fail it
        for sha, ref in updates:
            out.write(
                f"quire: warning: no CI run queued for {ref} ({sha[:12]}): {exc}\n"
                f"quire: the push itself succeeded; once that is fixed, push again or run "
                f"`quire ci run {sha} --repo {git_dir}`\n"
            )
        return 0
    for run_id, ref, sha in queued:
        out.write(f"quire: queued run {run_id} for {ref} ({sha[:12]})\n")
    if live is None:
        from quire.service.wake import wake_all  # the datagram sockets: SQLite's wake-up only

        try:
            live = wake_all(state)
        except OSError:
            live = 0
    if not live:
        # Not naming the server: urllib.parse (and its `re`) would cost the hook ~5 ms.
        seen = " (none seen by the queue database within its lease)" if database else ""
        out.write(
            f"quire: no worker is running{seen}: the run waits in the queue (`quire ci worker`)\n"
        )
    return len(queued)


def _enqueue(
    state: str, pushes: Sequence[Push]
) -> tuple[list[tuple[str, str, str]], int | None, bool]:
    """Queue `pushes`: (run id, ref, sha) of each, how many workers are live, and whether
    the queue is a database (its NOTIFY woke them on every machine, its worker registry
    counted them); None, False: the SQLite queue, whose workers the caller wakes and
    counts over `quire.service.wake`.
    With a database, through libpq itself (`quire.service.pglite`: psycopg's import alone
    would cost the push ~0.1 s), or psycopg where no libpq can be loaded."""
    database = database_url()
    if database is not None:
        from quire.service.pglite import enqueue

        queued = enqueue(database, pushes)
        if queued is not None:
            return queued[0], queued[1], True
    with open_queue(state) as queue:
        entries = queue.enqueue(pushes)
        done = [(e.run_id, e.ref, e.sha) for e in entries]
        if queue.leases:
            return done, len(queue.workers()), True
        return done, None, False


def _parse_args(argv: Sequence[str]) -> tuple[str, list[str]]:
    state: str | None = None
    patterns: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--state-dir":
            state = next(args)
        elif arg == "--pattern":
            patterns.append(next(args))
        else:
            raise ValueError(f"unknown argument {arg!r}")
    if state is None:
        raise ValueError("--state-dir is required")
    return state, patterns


def main(argv: Sequence[str] | None = None) -> int:
    """The hook's entry point; always exits 0 (post-receive cannot undo a push anyway)."""
    try:
        state, patterns = _parse_args(sys.argv[1:] if argv is None else argv)
        git_dir = os.path.realpath(os.environ.get("GIT_DIR", "."))
        updates = [
            (sha, ref) for sha, ref in parse_updates(sys.stdin.read()) if wanted(ref, patterns)
        ]
        queue_pushes(state, git_dir, updates, sys.stderr)
    except Exception as exc:  # a broken install must not break pushes either
        sys.stderr.write(f"quire: warning: the CI hook failed, no run was queued: {exc}\n")
    sys.stderr.flush()
    return 0
