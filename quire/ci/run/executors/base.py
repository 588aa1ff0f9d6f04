"""What every executor offers the runtime."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from quire.tools.process import OutputHandler


@dataclass(frozen=True)
class Command:
    """One `rt.sh` call, ready to run: argv (a string became `sh -c`), extra env, limit."""

    argv: tuple[str, ...]
    display: str
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
        if isinstance(cmd, str):
            return cls(("sh", "-c", cmd), cmd, dict(env or {}), timeout)
        return cls(tuple(cmd), shlex.join(cmd), dict(env or {}), timeout)


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
