"""Live output, big output, secrets and `logs --follow`, with `python -m quire` as a user runs it.

Each test runs on both executors. Timing is measured on the kernel's uptime
clock, which the job (host or container: one kernel) and this test share, so
a line's latency is its arrival time minus the time the job printed it.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from quire.ci.store.logs import LogReader, event_bytes
from quire.ci.store.runs import RunDir, store_for
from quire.paths import state_dir
from tests.integration.test_docker_runs import DOCKERFILE, repo_with

pytestmark = pytest.mark.integration

EXECUTORS = pytest.mark.parametrize("executor", ["host", "docker"])


def uptime() -> float:
    """The kernel's uptime clock, as a job reads it with `cut -d' ' -f1 /proc/uptime`."""
    return float(Path("/proc/uptime").read_text().split()[0])


@dataclass
class PipeReader:
    """Drains one pipe on its own thread, noting when each chunk arrived (uptime)."""

    pipe: IO[bytes]
    keep: bool = True
    size: int = 0
    data: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (uptime, size so far)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self.pipe:
            fd = self.pipe.fileno()
            while chunk := os.read(fd, 1 << 20):
                self.size += len(chunk)
                if self.keep:
                    self.data += chunk
                self.arrivals.append((uptime(), self.size))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the pipe was not closed"

    def arrived(self, needle: bytes) -> float | None:
        """When the chunk completing the first `needle` arrived, or None."""
        at = bytes(self.data).find(needle)
        if at < 0:
            return None
        end = at + len(needle)
        return next(when for when, size in self.arrivals if size >= end)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    out: PipeReader
    err: PipeReader

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.out.join(10)
        self.err.join(10)
        return code


def quire(*args: str, keep: bool = True) -> Running:
    proc = subprocess.Popen(
        [sys.executable, "-m", "quire", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdout is not None and proc.stderr is not None
    return Running(proc, PipeReader(proc.stdout, keep), PipeReader(proc.stderr, keep))


def start_run(repo: Path, executor: str, *extra: str, keep: bool = True) -> Running:
    return quire("ci", "run", "--executor", executor, "--repo", str(repo), *extra, keep=keep)


def make(tmp_path: Path, name: str, ci: str, **extra: str | bytes) -> Path:
    files: dict[str, str | bytes] = {".quire/ci.py": ci, ".quire/Dockerfile": DOCKERFILE}
    files.update(extra)
    return repo_with(tmp_path, name, files)


def latest(repo: Path) -> RunDir:
    return store_for(repo).find("latest")


def job_events(repo: Path, job: str) -> list[dict[str, Any]]:
    return list(LogReader(latest(repo).path / "jobs" / job / "log.jsonl"))


def write_config(text: str) -> None:
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


# --- live output ----------------------------------------------------------------------------------

LINES = 6
LINE_NUMBERS = " ".join(str(i) for i in range(1, LINES + 1))
INTERLEAVED = f"""
from quire.ci import job

@job(inputs=["quire/push"])
def talk(rt):
    rt.sh(
        "for i in {LINE_NUMBERS}; do "
        "echo \\"out $i $(cut -d' ' -f1 /proc/uptime)\\"; "
        "echo \\"err $i $(cut -d' ' -f1 /proc/uptime)\\" >&2; "
        "sleep 0.4; done",
        check=True,
    )
"""


@EXECUTORS
def test_output_reaches_the_terminal_while_the_command_still_runs(
    tmp_path: Path, executor: str
) -> None:
    repo = make(tmp_path, f"live-{executor}", INTERLEAVED)
    run = start_run(repo, executor)
    code = run.wait(90)
    out, err = bytes(run.out.data), bytes(run.err.data)
    assert code == 0, out + err
    latencies = []
    for stream, reader, other in (("out", run.out, err), ("err", run.err, out)):
        printed = {
            int(i): float(at)
            for i, at in re.findall(
                rb"^" + stream.encode() + rb" (\d+) ([\d.]+)$", reader.data, re.M
            )
        }
        assert sorted(printed) == list(range(1, LINES + 1)), reader.data
        assert f"{stream} 1 ".encode() not in other  # job stdout -> stdout, stderr -> stderr
        for i, at in printed.items():
            arrived = reader.arrived(f"{stream} {i} ".encode())
            assert arrived is not None
            latencies.append(arrived - at)
    # Each line shows up within a second of being printed (0.01s clock resolution)...
    assert max(latencies) < 1.0, latencies
    # ...so the first line is on screen long before the command's last one.
    first, last = run.out.arrived(b"out 1 "), run.out.arrived(f"out {LINES} ".encode())
    assert first is not None and last is not None
    assert last - first > 0.4 * (LINES - 1) - 0.5, (first, last)


# --- big output -----------------------------------------------------------------------------------

MIB = 1024 * 1024
BIG = 50 * MIB


def flood_stream(line: bytes, end: bytes) -> bytes:
    """What `yes LINE | head -c BIG; echo END` writes (the test keeps only its tail)."""
    return (line * (BIG // len(line) + 1))[:BIG] + end


FLOOD = f"""
from quire.ci import job

@job(inputs=["quire/push"])
def flood(rt):
    result = rt.sh(
        "{{ yes 0123456789abcdef | head -c {BIG}; echo END-OUT; }} & "
        "{{ yes fedcba9876543210 | head -c {BIG}; echo END-ERR; }} >&2; wait",
        check=True,
    )
    return {{
        "stdout": [len(result.stdout), result.stdout_truncated, result.stdout[-12:]],
        "stderr": [len(result.stderr), result.stderr_truncated, result.stderr[-12:]],
    }}
"""


@EXECUTORS
def test_50_mib_on_stdout_and_stderr_at_once_completes_and_the_log_holds_every_byte(
    tmp_path: Path, executor: str
) -> None:
    write_config("[output]\ncapture_limit = 1048576\n")
    repo = make(tmp_path, f"flood-{executor}", FLOOD)
    run = start_run(repo, executor)
    code = run.wait(90)
    assert code == 0, f"exit {code}"
    expected = {
        "stdout": flood_stream(b"0123456789abcdef\n", b"END-OUT\n"),
        "stderr": flood_stream(b"fedcba9876543210\n", b"END-ERR\n"),
    }
    # quire's terminal got every byte, each stream on its own (docker's build may add to both).
    assert expected["stdout"] in run.out.data
    assert run.err.data.endswith(expected["stderr"])
    events = job_events(repo, "flood")
    for stream, data in expected.items():
        logged = sum(len(event_bytes(e)) for e in events if e["event"] == stream)
        assert logged == len(data), stream
    state = yaml.safe_load((latest(repo).path / "jobs" / "flood" / "state.yml").read_text())
    # ShOutput keeps the END of each stream, capture_limit bytes of it.
    for stream, data in expected.items():
        assert state["outputs"][stream] == [MIB, True, data[-12:].decode()], stream


# --- secrets --------------------------------------------------------------------------------------

SECRETS = """
from quire.ci import job

@job(inputs=["quire/push"])
def leak(rt):
    token = rt.secret("plain_token")
    rt.sh(["echo", "argv " + token])
    rt.sh(["sh", "-c", 'printf "%s" "$1"; sleep 0.3; printf "%s\\\\n" "$2"', "-",
           token[:7], token[7:]])
    rt.sh("cat leak.bin; cat leak.bin >&2")
    return {"token": token, "again": [token + "!"]}

@job(inputs=["leak"])
def fail(rt):
    raise RuntimeError("failing with " + rt.secret("plain_token"))
"""


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


@EXECUTORS
def test_configured_secrets_are_masked_in_terminal_logs_and_records(
    tmp_path: Path, executor: str
) -> None:
    plain = f"pl41n-{secrets.token_hex(8)}"
    from_file = f"f1le-{secrets.token_hex(8)}"
    token_file = tmp_path / "token.txt"
    token_file.write_text(from_file + "\n")
    write_config(f'[secrets]\nplain_token = "{plain}"\nfile_token = {{ file = "{token_file}" }}\n')
    # file_token is never asked for: configured values are masked from the start of the run.
    # Its line is not valid UTF-8, so the log keeps it as base64 (masked before encoding).
    leak = b"\xff\xfe file " + from_file.encode() + b" end\n"
    repo = make(tmp_path, f"secret-{executor}", SECRETS, **{"leak.bin": leak})
    run = start_run(repo, executor)
    code = run.wait(90)
    terminal = bytes(run.out.data) + bytes(run.err.data)
    assert code == 1, terminal
    for value in (plain, from_file):
        assert value.encode() not in terminal
    assert b"argv ***\n" in run.out.data
    assert b"\xff\xfe file *** end\n" in run.out.data
    assert b"\xff\xfe file *** end\n" in run.err.data
    # Split over two writes 0.3s apart, it still arrives masked.
    assert b"\n***\n" in run.out.data

    events = job_events(repo, "leak")
    logged = b"".join(event_bytes(e) for e in events if e["event"] == "stdout")
    assert logged == b"argv ***\n***\n\xff\xfe file *** end\n"
    assert any(e.get("encoding") == "base64" for e in events)
    assert next(e["cmd"] for e in events if e["event"] == "sh-start") == "echo 'argv ***'"

    run_dir = latest(repo).path
    leak_state = yaml.safe_load((run_dir / "jobs" / "leak" / "state.yml").read_text())
    assert leak_state["outputs"] == {"token": "***", "again": ["***!"]}
    fail_state = yaml.safe_load((run_dir / "jobs" / "fail" / "state.yml").read_text())
    assert "failing with ***" in fail_state["error"]

    state = state_dir()
    assert files_under(state)
    for path in files_under(state):
        data = path.read_bytes()
        for value in (plain, from_file):
            assert value.encode() not in data, path
        if path.name == "log.jsonl":
            decoded = b"".join(event_bytes(e) for e in LogReader(path))
            assert plain.encode() not in decoded and from_file.encode() not in decoded, path
    replayed = quire("ci", "logs", "latest", "--repo", str(repo))
    assert replayed.wait(30) == 0
    shown = bytes(replayed.out.data) + bytes(replayed.err.data)
    assert b"argv ***" in shown
    assert plain.encode() not in shown and from_file.encode() not in shown


# --- logs --follow --------------------------------------------------------------------------------

TICKS = 10
TICK_NUMBERS = " ".join(str(i) for i in range(1, TICKS + 1))
TICKER = f"""
from quire.ci import job

@job(inputs=["quire/push"])
def ticker(rt):
    rt.sh("for i in {TICK_NUMBERS}; do echo \\"tick $i $(cut -d' ' -f1 /proc/uptime)\\"; "
          "echo tock $i >&2; sleep 0.3; done", check=True)
"""


def wait_for_active_run(repo: Path, run: Running, timeout: float) -> None:
    active = store_for(repo).root / "active"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if active.is_dir() and any(not p.name.startswith(".") for p in active.iterdir()):
            return
        assert run.proc.poll() is None, bytes(run.out.data) + bytes(run.err.data)
        time.sleep(0.02)
    pytest.fail("the run never became active")


@EXECUTORS
def test_logs_follow_started_mid_run_prints_the_output_live_and_returns_when_the_run_ends(
    tmp_path: Path, executor: str
) -> None:
    repo = make(tmp_path, f"follow-{executor}", TICKER)
    run = start_run(repo, executor)
    wait_for_active_run(repo, run, 60)
    follower = quire("ci", "logs", "latest", "--follow", "--split-streams", "--repo", str(repo))
    assert run.wait(90) == 0, bytes(run.err.data)
    run_ended = uptime()
    assert follower.wait(10) == 0, bytes(follower.err.data)
    # It returns once the run has ended (it polls every 0.1s), not at some later timeout.
    assert uptime() - run_ended < 3
    followed_out, followed_err = bytes(follower.out.data), bytes(follower.err.data)
    printed = {
        int(i): float(at) for i, at in re.findall(rb"^tick (\d+) ([\d.]+)$", followed_out, re.M)
    }
    assert sorted(printed) == list(range(1, TICKS + 1)), followed_out
    assert followed_out.startswith(b"==> ticker\n$ for i in")
    assert followed_err == b"".join(b"tock %d\n" % i for i in range(1, TICKS + 1))
    # Live: the follower had the first tick before the job printed its last one,
    # and the last one within a second of its printing.
    first = follower.out.arrived(b"tick 1 ")
    last = follower.out.arrived(b"tick %d " % TICKS)
    assert first is not None and last is not None
    assert first < printed[TICKS], (first, printed)
    assert last - printed[TICKS] < 1.0, (last, printed)
    # It is what `logs` shows once the run is over, then the run's outcome.
    replay = quire("ci", "logs", "latest", "--split-streams", "--repo", str(repo))
    assert replay.wait(30) == 0
    replayed = bytes(replay.out.data)
    assert followed_out.startswith(replayed)
    assert re.search(
        rb"^run complete in [\d.]+s: .*/complete/", followed_out[len(replayed) :], re.M
    )
    assert bytes(replay.err.data) == followed_err
