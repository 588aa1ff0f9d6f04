"""The service's errors: subclasses of the one QuireError tree (quire.errors).

Imported by the hook, so it stays as light as `quire.errors` itself.
"""

from __future__ import annotations

from quire.errors import EnvironmentProblem, RunNotFound, UsageError


class QueueCorrupt(EnvironmentProblem):
    """The queue database cannot be read as a queue (not SQLite, or damaged)."""


class QueueReplaced(EnvironmentProblem):
    """The queue file was deleted, replaced, truncated or overwritten while it was open:
    SQLite would go on using what it opened, and runs queued since would be lost."""


class QueueUnavailable(EnvironmentProblem):
    """The queue database cannot be written now (disk full, locked, read-only)."""


class QueueEntryNotFound(RunNotFound):
    """`quire ci cancel RUN` names no queued or running run (or several)."""


class HookConflict(UsageError):
    """`quire ci hook install` found something in the way it will not overwrite."""
