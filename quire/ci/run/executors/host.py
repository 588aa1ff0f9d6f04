"""HostExecutor: each command is a local process with the workspace as its cwd."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from quire.ci.run.executors.base import Command, ExecResult
from quire.errors import ProgramNotFound
from quire.tools import process
from quire.tools.process import OutputHandler


class HostExecutor:
    """Runs commands directly on this machine, in the workspace."""

    name = "host"

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace

    def __enter__(self) -> HostExecutor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def resolve(self, command: Command) -> str:
        """argv[0] as a shell in the workspace would find it; raises `ProgramNotFound`."""
        program = command.argv[0]
        if "/" in program:
            # Relative paths are against the workspace, never quire's own cwd.
            path = self.workspace / program
            if not os.access(path, os.X_OK) or path.is_dir():
                reason = "not executable" if path.exists() else "no such file"
                raise ProgramNotFound(f"{program}: {reason}")
            return str(path)
        return process.find_program(program, search_path=command.env.get("PATH"))

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        """Run `command` in the workspace; a program that cannot start gives exit 127."""
        try:
            program = self.resolve(command)
            result = process.stream(
                [program, *command.argv[1:]],
                on_output,
                cwd=self.workspace,
                env=command.env,
                timeout=command.timeout,
            )
        except ProgramNotFound as exc:
            on_output("stderr", f"quire: {exc}\n".encode())
            return ExecResult(127, datetime.now(UTC), 0.0)
        return ExecResult(result.exit, result.started_at, result.duration_s, result.timed_out)
