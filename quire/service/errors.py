"""The service's errors: subclasses of the one QuireError tree (quire.errors).

Imported by the hook, so it stays as light as `quire.errors` itself.
"""

from __future__ import annotations

from quire.errors import EnvironmentProblem, RunNotFound, UsageError


class QueueCorrupt(EnvironmentProblem):
    """The queue database cannot be read as a queue (not SQLite, or damaged)."""


class QueueUnavailable(EnvironmentProblem):
    """The queue database cannot be written now (disk full, locked, read-only)."""


class QueueEntryNotFound(RunNotFound):
    """`quire ci cancel RUN` names no queued or running run (or several)."""


class HookConflict(UsageError):
    """`quire ci hook install` found something in the way it will not overwrite."""
