"""Helpers for the web tests (no tests here): run stores written by hand in tmp.

Records are written with the store's own pydantic models; logs as JSON
Lines exactly as the run core writes them, so the web reads what a real
run leaves without a run having to happen.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from quire.ci.store.records import (
    ContainerInfo,
    JobState,
    RunMeta,
    RunResult,
    RunTimes,
    write_record,
)

T0 = datetime(2026, 11, 24, 16, 0, 0, tzinfo=UTC)


def run_id(n: int) -> str:
    """A valid, time-sortable run id; larger `n` is newer."""
    when = T0 + timedelta(seconds=n)
    return when.strftime("%Y%m%d-%H%M%S-%f-") + f"{n % 0xFFFFFF:06x}"


def line(event: str, **fields: Any) -> bytes:
    return orjson.dumps({"t": "2026-11-24T16:00:00.000Z", "event": event, **fields}) + b"\n"


def untimed(html: str) -> str:
    """Rendered log HTML without the time mark each line starts with."""
    return re.sub(r'<i data-t="[0-9:.]*"></i>', "", html)


def out(text: str, stream: str = "stdout") -> bytes:
    return line(stream, data=text)


@dataclass
class Store:
    """A state directory with runs written by hand."""

    state: Path

    def add(
        self,
        n: int,
        *,
        repo: str = "proj",
        state: str = "complete",
        jobs: dict[str, bytes] | None = None,
        statuses: dict[str, str] | None = None,
        outputs: dict[str, dict[str, Any]] | None = None,
        error: str | None = None,
        container: bool = False,
        revision: str = "HEAD",
        subject: str | None = None,
        plan: dict[str, list[str]] | None = None,
    ) -> Path:
        """Run number `n` of `repo` in `state`, with job logs given as raw JSON Lines."""
        rid = run_id(n)
        path = self.state / "runs" / repo / state / rid
        (path / "jobs").mkdir(parents=True)
        started = T0 + timedelta(seconds=n)
        write_record(
            path / "meta.yml",
            RunMeta.model_validate(
                {
                    "run_id": rid,
                    "repo": repo,
                    "git_dir": "/nowhere/.git",
                    "revision": revision,
                    "sha": f"{n:040x}",
                    "ref": "refs/heads/main",
                    "pushed_at": started,
                    "executor": "docker" if container else "host",
                    "subject": subject,
                    "plan": [{"job_id": j, "inputs": i} for j, i in (plan or {}).items()],
                }
            ),
        )
        finished = state in ("complete", "failed", "cancelled")
        end = started + timedelta(seconds=2) if finished else None
        write_record(path / "times.yml", RunTimes(started_at=started, finished_at=end))
        if state == "cancelled":
            write_record(
                path / "result.yml",
                RunResult.model_validate(
                    {
                        "exit_code": 130,
                        "reason": "cancelled",
                        "error": "cancelled by alice",
                        "cancelled_by": "alice",
                        "cancelled_at": end,
                    }
                ),
            )
        elif finished:
            code = 0 if state == "complete" else 1
            reason = None if code == 0 else "jobs-failed"
            write_record(
                path / "result.yml",
                RunResult.model_validate({"exit_code": code, "reason": reason, "error": error}),
            )
        if container:
            write_record(
                path / "container.yml",
                ContainerInfo(
                    image_tag=f"quire-ci/{repo}:{rid}",
                    container_id="9f3b8a72c1d4e5f6a7b8",
                    build_started_at=started,
                    build_finished_at=started + timedelta(seconds=1),
                    container_started_at=started + timedelta(seconds=1),
                    container_stopped_at=end,
                ),
            )
        run_log = line("run-start", run_id=rid)
        for index, (job, log) in enumerate((jobs or {}).items()):
            status = (statuses or {}).get(job, "success" if finished else "running")
            self.write_job(path, job, status, index, (outputs or {}).get(job))
            (path / "jobs" / job / "log.jsonl").write_bytes(log)
            run_log += line("job-start", job=job)
            if status != "running":
                run_log += line("job-end", job=job, status=status)
        if finished:
            run_log += line("run-end", exit_code=0 if state == "complete" else 1)
        (path / "log.jsonl").write_bytes(run_log)
        latest = self.state / "runs" / repo / "latest"
        if latest.is_symlink():
            latest.unlink()
        os.symlink(f"{state}/{rid}", latest)
        return path

    @staticmethod
    def write_job(
        path: Path,
        job: str,
        status: str,
        index: int = 0,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        (path / "jobs" / job).mkdir(parents=True, exist_ok=True)
        started = T0 + timedelta(seconds=index)
        done = status not in ("running", "pending")
        write_record(
            path / "jobs" / job / "state.yml",
            JobState.model_validate(
                {
                    "job_id": job,
                    "status": status,
                    "started_at": started,
                    "finished_at": started + timedelta(seconds=1) if done else None,
                    "duration_s": 1.0 if done else None,
                    "error": error,
                    "outputs": outputs or {},
                }
            ),
        )
