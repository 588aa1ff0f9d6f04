"""Shared scaffolding of the web benchmarks (not a benchmark itself).

`served()` starts `quire ci serve --port 0` on a scratch state dir as its
own process (as a user would), reads the URL it prints, and stops it with
SIGTERM by pid. `fabricate_runs()` writes finished runs straight into the
store with the store's own records (a thousand real runs would take
minutes and measure `quire ci run`, not the web). `get()` times one HTTP
GET: time to first byte and to the last byte.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import _common as c
import orjson
import psutil


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    def peak_rss_mib(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mib(self) -> float:
        return float(psutil.Process(self.proc.pid).memory_info().rss) / (1024 * 1024)


@contextmanager
def served(sc: c.Scratch, log: Path) -> Iterator[Server]:
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [c.QUIRE, "ci", "serve", "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=c.quire_env(sc),
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            found = re.search(r"at (http://\S+/) ", log.read_text(errors="replace"))
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"quire ci serve did not start:\n{log.read_text()}")
            time.sleep(0.02)
        yield Server(found.group(1), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@dataclass
class Timing:
    first_byte: float
    total: float
    size: int
    status: int


def get(server: Server, path: str) -> Timing:
    """One GET on a fresh connection: seconds to the first body byte and to the end."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    response.read(1)
    first = time.perf_counter() - t0
    size = 1 + len(response.read())
    total = time.perf_counter() - t0
    conn.close()
    return Timing(first, total, size, response.status)


def download(server: Server, path: str) -> Timing:
    """`get()` for a big body: read into one reused buffer and dropped, as `cat > /dev/null`
    does, so the client's own memory does not count."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    buffer = memoryview(bytearray(1024 * 1024))
    size = first = 0
    while count := response.readinto(buffer):
        first = first or time.perf_counter() - t0
        size += count
    total = time.perf_counter() - t0
    conn.close()
    return Timing(first, total, size, response.status)


def line(event: str, **fields: object) -> bytes:
    return orjson.dumps({"t": "2026-11-24T16:00:00.000Z", "event": event, **fields}) + b"\n"


def fabricate_runs(sc: c.Scratch, count: int, *, repos: int = 4) -> list[tuple[str, str]]:
    """`count` finished runs over `repos` repositories, each with two jobs; (repo, id) list."""
    from quire.ci.store.records import JobState, RunMeta, RunResult, RunTimes, write_record

    start = datetime(2026, 1, 1, tzinfo=UTC)
    made = []
    for n in range(count):
        repo = f"{sc.repo_name}-{n % repos}"
        when = start + timedelta(minutes=n)
        run_id = when.strftime("%Y%m%d-%H%M%S-%f-") + f"{n:06x}"
        state = "failed" if n % 7 == 0 else "complete"
        path = sc.state / "runs" / repo / state / run_id
        meta = {
            "run_id": run_id,
            "repo": repo,
            "git_dir": str(sc.repo / ".git"),
            "revision": "main",
            "sha": f"{n:040x}",
            "ref": "refs/heads/main",
            "pushed_at": when,
            "executor": "host",
        }
        for job in ("lint", "test"):
            (path / "jobs" / job).mkdir(parents=True)
            write_record(
                path / "jobs" / job / "state.yml",
                JobState.model_validate(
                    {"job_id": job, "status": "success", "started_at": when, "duration_s": 1.0}
                ),
            )
            (path / "jobs" / job / "log.jsonl").write_bytes(
                line("sh-start", cmd="true") + line("sh-exit", exit=0, duration_s=0.01)
            )
        write_record(path / "meta.yml", RunMeta.model_validate(meta))
        finished = when + timedelta(seconds=42)
        write_record(path / "times.yml", RunTimes(started_at=when, finished_at=finished))
        code = 1 if state == "failed" else 0
        reason = "jobs-failed" if code else None
        write_record(
            path / "result.yml", RunResult.model_validate({"exit_code": code, "reason": reason})
        )
        (path / "log.jsonl").write_bytes(line("run-start", run_id=run_id))
        made.append((repo, run_id))
    for n in range(min(repos, count)):
        repo = f"{sc.repo_name}-{n}"
        newest = max(run_id for r, run_id in made if r == repo)
        state = next(
            s for s in ("complete", "failed") if (sc.state / "runs" / repo / s / newest).is_dir()
        )
        os.symlink(f"{state}/{newest}", sc.state / "runs" / repo / "latest")
    return made
