"""What every executor offers the runtime."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from quire.ci.pipeline import CacheDef
from quire.ci.vocabulary import ExecutorKind
from quire.config import DockerSettings

if TYPE_CHECKING:
    from quire.ci.run.artifacts import WorkspaceTree
    from quire.ci.run.outlet import RunOutlet
    from quire.tools.process import OutputHandler


@dataclass(frozen=True)
class Command:
    """One `rt.sh` call, ready to run: argv (a string became `sh -c`), extra env, limit."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None

    @classmethod
    def from_user(
        cls,
        cmd: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Command:
        """Build from what a job passed to `rt.sh` (already checked by the runtime)."""
        argv = ("sh", "-c", cmd) if isinstance(cmd, str) else tuple(cmd)
        return cls(argv, dict(env or {}), timeout)


@dataclass(frozen=True)
class ExecResult:
    """How a command ended. `exit` < 0: killed by that signal."""

    exit: int
    started_at: datetime
    duration_s: float
    timed_out: bool = False


class Executor(Protocol):
    """Runs commands for one run; a context manager that owns its setup and teardown."""

    name: str

    def __enter__(self) -> Executor: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        """Run `command`, streaming its output to `on_output`; never raises for its exit."""
        ...

    def end_job(self) -> None:
        """A job is over: end whatever it left running (host processes)."""
        ...

    def abort(self) -> None:
        """Kill every command running now, from any thread (an interrupt with jobs side by
        side): their `execute` calls return at once."""
        ...

    def workspace_tree(self) -> AbstractContextManager[WorkspaceTree]:
        """The workspace as quire can read it now (`rt.artifact`), for the block's length."""
        ...


@dataclass(frozen=True)
class ExecutorSetup:
    """What an executor is built from: the run's identity, its tree, and its outlet."""

    kind: ExecutorKind
    workspace: Path
    run_id: str
    repo: str
    store_label: str  # the `quire.store` label: the state dir the run belongs to
    docker: DockerSettings
    outlet: RunOutlet
    jobs: int = 1  # jobs that may run side by side (`--jobs`)
    # Whether the user keeps the workspace: a copied-in /work is copied back out then.
    keep_workspace: bool = False
    # The `quire.host` label: the host whose quire owns the run (runner.yml's host).
    host: str = field(default_factory=socket.gethostname)
    # The pipeline's `cache(name, path)` declarations: docker mounts a volume per cache
    # at its path; the host executor has nothing to do (the path is the host's own).
    caches: tuple[CacheDef, ...] = ()
    # Processes of quire's own that are not the jobs' (the job host): never ended as a
    # job's leftovers.
    spared: frozenset[int] = frozenset()


class ExecutorFactory(Protocol):
    """The orchestrator's seam: tests hand it a fake executor."""

    def __call__(self, setup: ExecutorSetup) -> Executor: ...
