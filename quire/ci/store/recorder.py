"""The YAML records of a run, kept up to date from its events (a subscriber of the outlet).

    RunStarted                       times.yml (started_at)
    JobStarted / JobFinished         jobs/<id>/state.yml
    ImageBuild*, Container*          container.yml, grown phase by phase
    ProcessesRunning                 processes.yml (host runs)
    RunEnding                        times.yml (finished_at), result.yml

A failure to write container.yml is reported (through `warn`) and never
fails the run or skips teardown; the other records are the run's truth, so
a failure to write them goes up as `StoreWriteFailed` (the outlet reports
it and the run stops).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from quire.ci.events import (
    ContainerStarted,
    ContainerStopping,
    Event,
    ImageBuildFinished,
    ImageBuildStarted,
    JobFinished,
    JobStarted,
    ProcessesRunning,
    RunEnding,
    RunStarted,
)
from quire.ci.store.records import (
    ContainerInfo,
    HostProcesses,
    JobState,
    JobStatus,
    RecordedProcess,
    RunTimes,
    write_record,
)
from quire.errors import StoreWriteFailed


class RunRecords:
    """Writes a run's records as its events arrive."""

    def __init__(self, run_path: Callable[[], Path], warn: Callable[[str], None]) -> None:
        # A callable: the run's directory moves between state directories.
        self._path = run_path
        self._warn = warn
        self._times: RunTimes | None = None
        self._container: ContainerInfo | None = None

    def handle(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._times = RunTimes(started_at=event.at)
                _write(self._path() / "times.yml", self._times)
            case JobStarted():
                state = JobState(job_id=event.job, status=JobStatus.running, started_at=event.at)
                self._write_state(state)
            case JobFinished():
                self._write_state(event.state)
            case RunEnding():
                times = self._times or RunTimes(started_at=event.at)
                times.finished_at = event.at
                _write(self._path() / "times.yml", times)
                _write(self._path() / "result.yml", event.result)
            case ImageBuildStarted():
                self._container = ContainerInfo(image_tag=event.image, build_started_at=event.at)
                self._save_container()
            case ImageBuildFinished(ok=True):
                self._update_container(build_finished_at=event.at)
            case ContainerStarted():
                self._update_container(container_id=event.container, container_started_at=event.at)
            case ContainerStopping():
                self._update_container(container_stopped_at=event.at)
            case ProcessesRunning():
                running = [RecordedProcess(pid=pid, start=start) for pid, start in event.processes]
                # Written twice per host command, and worth nothing after a crash of the
                # machine (the processes are gone too): atomic, but not fsynced.
                processes = HostProcesses(processes=running)
                _write(self._path() / "processes.yml", processes, durable=False)
            case _:
                pass

    def _write_state(self, state: JobState) -> None:
        directory = self._path() / "jobs" / state.job_id
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreWriteFailed.of(directory, exc) from exc
        _write(directory / "state.yml", state)

    def _update_container(self, **changes: object) -> None:
        if self._container is None:
            return
        for name, value in changes.items():
            setattr(self._container, name, value)
        self._save_container()

    def _save_container(self) -> None:
        assert self._container is not None
        try:
            write_record(self._path() / "container.yml", self._container)
        except OSError as exc:
            self._warn(f"could not write container.yml: {exc}")

    def close(self) -> None:
        pass


def _write(path: Path, record: BaseModel, *, durable: bool = True) -> None:
    try:
        write_record(path, record, durable=durable)
    except OSError as exc:
        raise StoreWriteFailed.of(path, exc) from exc
