"""What the orchestrator tells whoever watches a run (the terminal, or nobody).

The orchestrator only calls these methods; how they look is the CLI's
business (`quire.cli.console`). Every text and byte handed over here is
already redacted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from quire.ci.store.records import JobState

StreamName = Literal["stdout", "stderr"]


class Reporter(Protocol):
    def run_started(self, header: str) -> None: ...

    def notice(self, text: str) -> None:
        """A status line of quire's own (image build, container start)."""

    def job_started(self, job_id: str) -> None: ...

    def command_started(self, job_id: str, display: str) -> None: ...

    def output(self, job_id: str, stream: StreamName, data: bytes) -> None:
        """A chunk of a command's output, as it arrives."""

    def command_finished(self, job_id: str, exit_code: int, duration_s: float) -> None: ...

    def job_finished(self, state: JobState) -> None: ...

    def run_finished(self, states: Sequence[JobState], status: str, location: str) -> None: ...


class SilentReporter:
    """A Reporter that shows nothing (tests, benchmarks)."""

    def run_started(self, header: str) -> None:
        pass

    def notice(self, text: str) -> None:
        pass

    def job_started(self, job_id: str) -> None:
        pass

    def command_started(self, job_id: str, display: str) -> None:
        pass

    def output(self, job_id: str, stream: StreamName, data: bytes) -> None:
        pass

    def command_finished(self, job_id: str, exit_code: int, duration_s: float) -> None:
        pass

    def job_finished(self, state: JobState) -> None:
        pass

    def run_finished(self, states: Sequence[JobState], status: str, location: str) -> None:
        pass
