"""Never leave a container or a broken run behind, against the real engine.

Signals at each phase of a docker run, a container killed under a job,
a runner killed with SIGKILL and cleaned up by `quire ci reconcile`,
concurrent runs, random SIGKILLs, resource limits and timeouts. quire
runs as a user runs it: `python -m quire` subprocesses, with this test's
own QUIRE_STATE_DIR / QUIRE_CACHE_DIR / QUIRE_CONFIG (tests/conftest.py).

Each test ends with `assert_nothing_left()`: no container labelled with
this test's state directory, and every run directory's records readable.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quire.ci.store.records import (
    ContainerInfo,
    JobState,
    RunMeta,
    RunnerInfo,
    RunResult,
    RunTimes,
    read_record,
)
from quire.ci.store.runs import RunDir, RunState, RunStore, store_for
from quire.paths import cache_dir, state_dir
from tests.integration.support import BASE_IMAGE, docker_cli, engine, without_sandbox
from tests.integration.test_docker_runs import DOCKERFILE, QUIRE_RUN, image_exists, repo_with

pytestmark = pytest.mark.integration

QUIRE = [sys.executable, "-m", "quire"]
REAL_DOCKER = shutil.which("docker") or "docker"

# --- helpers --------------------------------------------------------------------------------------


def events(log: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a log.jsonl (a line being written is skipped)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def event_names(log: Path) -> list[str]:
    return [str(e.get("event")) for e in events(log)]


def containers_of_store() -> list[str]:
    """`docker ps -a --filter label=quire.store=<this test's state dir>`."""
    return docker_cli(
        "ps", "--all", "--quiet", "--filter", f"label=quire.store={state_dir()}"
    ).stdout.split()


def containers_of_run(run_id: str) -> list[str]:
    return docker_cli(
        "ps", "--all", "--quiet", "--filter", f"label=quire.run-id={run_id}"
    ).stdout.split()


def all_run_dirs() -> list[RunDir]:
    root = state_dir() / "runs"
    if not root.is_dir():
        return []
    found: list[RunDir] = []
    for repo in sorted(root.iterdir()):
        if repo.is_dir():
            found.extend(RunStore(repo.name).runs())
    return found


def assert_records_readable(run: RunDir) -> None:
    """meta, times, result, runner, container and every job's state parse."""
    read_record(run.path / "meta.yml", RunMeta)
    if run.state in (RunState.complete, RunState.failed):
        read_record(run.path / "times.yml", RunTimes)
        read_record(run.path / "result.yml", RunResult)
    elif (run.path / "times.yml").exists():
        read_record(run.path / "times.yml", RunTimes)
    for name, model in (("runner.yml", RunnerInfo), ("container.yml", ContainerInfo)):
        if (run.path / name).exists():
            read_record(run.path / name, model)
    jobs = run.path / "jobs"
    if jobs.is_dir():
        for job in jobs.iterdir():
            if (job / "state.yml").exists():
                read_record(job / "state.yml", JobState)


def assert_nothing_left() -> None:
    """No container of this test's state dir exists; every run directory reads back."""
    assert containers_of_store() == [], "containers left behind"
    for run in all_run_dirs():
        assert_records_readable(run)


@dataclass
class Started:
    """A `quire ci run` subprocess, its output in files."""

    proc: subprocess.Popen[bytes]
    repo: Path
    out: Path
    err: Path
    before: frozenset[str]  # run ids of this repository that existed at launch

    @property
    def store(self) -> RunStore:
        return store_for(self.repo)

    def run_dir(self) -> RunDir | None:
        """This process's run: the newest of its repository's runs made since launch."""
        runs = [run for run in self.store.runs() if run.run_id not in self.before]
        return runs[0] if runs else None

    def run_log(self) -> Path | None:
        run = self.run_dir()
        return None if run is None else run.path / "log.jsonl"

    def job_log(self, job: str) -> Path | None:
        run = self.run_dir()
        return None if run is None else run.path / "jobs" / job / "log.jsonl"

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return code, self.stdout(), self.stderr()

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def start(tmp_path: Path) -> Any:
    """start(repo, *args, env=...) -> Started; kills whatever is still running at the end."""
    started: list[Started] = []

    def launch(repo: Path, *args: str, env: dict[str, str] | None = None) -> Started:
        n = len(started)
        store = store_for(repo)
        before = frozenset(run.run_id for run in store.runs())
        out, err = tmp_path / f"quire-{n}.out", tmp_path / f"quire-{n}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [*QUIRE_RUN, str(repo), *args],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, **(env or {})},
            )
        one = Started(proc, repo, out, err, before)
        started.append(one)
        return one

    yield launch
    for one in started:
        one.kill()


def wait_until(
    what: str, condition: Callable[[], bool], started: Started, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if started.proc.poll() is not None:
            pytest.fail(
                f"quire exited ({started.proc.returncode}) before {what}:\n{started.stderr()}"
            )
        time.sleep(0.005)
    pytest.fail(f"timed out waiting for {what}:\n{started.stderr()}")


def has_event(started: Started, event: str, **fields: Any) -> Callable[[], bool]:
    def check() -> bool:
        log = started.run_log()
        return log is not None and any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            for e in events(log)
        )

    return check


def command_started(started: Started, job: str) -> Callable[[], bool]:
    def check() -> bool:
        log = started.job_log(job)
        return log is not None and "sh-start" in event_names(log)

    return check


def docker_shim(tmp_path: Path, name: str, body: str) -> Path:
    """A QUIRE_DOCKER wrapper around the real engine CLI (docker or podman), to stretch
    one phase."""
    shim = tmp_path / "shims" / name
    shim.parent.mkdir(parents=True, exist_ok=True)
    real = shutil.which(engine().binary) or REAL_DOCKER
    shim.write_text(f"#!/bin/sh\nDOCKER={real}\n{body}")
    shim.chmod(0o755)
    return shim


def quire(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QUIRE, *args], capture_output=True, text=True, errors="replace", timeout=timeout
    )


def repo(tmp_path: Path, name: str, ci: str, dockerfile: str = DOCKERFILE, **extra: str) -> Path:
    files: dict[str, str | bytes] = {".quire/ci.py": ci, ".quire/Dockerfile": dockerfile}
    files.update(extra)
    return repo_with(tmp_path, name, files)


def result_of(run: RunDir) -> RunResult:
    result = run.result()
    assert result is not None, f"{run.path} has no result.yml"
    return result


# --- signals at every phase -----------------------------------------------------------------------

SLOW_JOB = """
from quire.ci import job

@job(inputs=["quire/push"])
def slow(rt):
    rt.sh(["sleep", "60"])

@job(inputs=["quire/push"])
def later(rt):
    rt.sh(["true"])
"""

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def assert_interrupted(started: Started, signum: signal.Signals, sent_at: float) -> RunDir:
    """Exit 130 within 2 s, run failed/interrupted, no container of the run."""
    code, out, err = started.wait(30)
    took = time.monotonic() - sent_at
    assert code == 130, out + err
    assert took < 2.0, f"{signum.name} took {took:.2f}s to end the run"
    print(f"{signum.name}: exit 130 after {took:.2f}s")
    assert "Traceback" not in out + err
    run = started.run_dir()
    assert run is not None
    assert run.state == RunState.failed
    result = result_of(run)
    assert result.reason is not None and result.reason.value == "interrupted"
    assert result.exit_code == 130
    assert signum.name in (result.error or "")
    assert containers_of_run(run.run_id) == []
    assert not run.workspace.exists()
    names = event_names(run.path / "log.jsonl")
    assert names[-1] == "run-end"
    return run


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_the_image_build_exits_130_and_leaves_no_image_or_container(
    tmp_path: Path, start: Any, signum: signal.Signals
) -> None:
    token = secrets.token_hex(6)  # no build cache: the RUN step really runs
    dockerfile = f"FROM {BASE_IMAGE}\nRUN sleep 2 && echo {token} > /token\n"
    started = start(repo(tmp_path, "sig-build", SLOW_JOB, dockerfile))
    wait_until("the image build", has_event(started, "image-build-start"), started)
    time.sleep(0.8)  # into the `RUN sleep 2` step
    assert started.proc.poll() is None
    sent = time.monotonic()
    started.proc.send_signal(signum)
    run = assert_interrupted(started, signum, sent)
    record = read_record(run.path / "container.yml", ContainerInfo)
    assert record.build_started_at is not None
    assert record.build_finished_at is None, "the signal came after the build"
    assert record.container_id is None
    time.sleep(1.5)  # a build the daemon carried on with would tag the image by now
    assert not image_exists(record.image_tag)
    assert_nothing_left()


SLOW_CREATE = """\
import os, subprocess, sys, time

args = sys.argv[1:]
if args and args[0] == "run":
    args[-3] = subprocess.run(
        ["{docker}", "image", "inspect", "--format", "{{{{.Id}}}}", args[-3]],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        open(__file__ + ".requested", "w").close()
        time.sleep(0.5)
        # The engine checked the bind mount's source with the request; quire
        # has removed the workspace since.
        mount = args[args.index("--mount") + 1]
        os.makedirs(mount.split("src=")[1].split(",dst=")[0], exist_ok=True)
        os.execv("{docker}", ["{docker}", *args])
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
os.execv("{docker}", ["{docker}", *args])
"""


@pytest.mark.parametrize("signum", [signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_while_docker_run_is_creating_the_container_still_removes_it(
    tmp_path: Path, start: Any, signum: signal.Signals
) -> None:
    # The engine finishes creating the container 0.5 s after the request
    # (which named the image by id), whether or not the client that sent it
    # is still there: setsid, so quire killing the client's process group
    # does not stop "the engine".
    shim = tmp_path / "shims" / "docker-slow-create"
    shim.parent.mkdir(parents=True, exist_ok=True)
    # A sh launcher: a `#!python` line cannot hold a venv path with spaces.
    script = tmp_path / "shims" / "slow_create.py"
    script.write_text(SLOW_CREATE.format(docker=REAL_DOCKER))
    shim.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))} "$@"\n'
    )
    shim.chmod(0o755)
    started = start(repo(tmp_path, "sig-create", SLOW_JOB), env={"QUIRE_DOCKER": str(shim)})
    requested = Path(f"{script}.requested")
    wait_until("docker run to send its request", requested.exists, started)
    sent = time.monotonic()
    started.proc.send_signal(signum)
    run = assert_interrupted(started, signum, sent)
    time.sleep(1.5)  # the engine is done creating by now
    assert containers_of_run(run.run_id) == []
    assert_nothing_left()


@pytest.mark.engines("docker", "podman")
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_a_signal_after_docker_run_created_the_container_but_before_it_returned_removes_it(
    tmp_path: Path, start: Any, signum: signal.Signals
) -> None:
    # The container exists and runs, but quire has not read its id yet.
    shim = docker_shim(
        tmp_path,
        "docker-slow-run",
        'if [ "$1" = run ]; then "$DOCKER" "$@"; s=$?; sleep 5; exit $s; fi\nexec "$DOCKER" "$@"\n',
    )
    started = start(repo(tmp_path, "sig-run", SLOW_JOB), env={"QUIRE_DOCKER": str(shim)})
    wait_until("the end of the build", has_event(started, "image-build-end"), started)
    run_id = started.run_dir().run_id  # type: ignore[union-attr]
    wait_until(
        "the container to exist",
        lambda: containers_of_run(run_id) != [],
        started,
    )
    sent = time.monotonic()
    started.proc.send_signal(signum)
    run = assert_interrupted(started, signum, sent)
    record = read_record(run.path / "container.yml", ContainerInfo)
    assert record.container_started_at is None, "the signal came after docker run returned"
    assert_nothing_left()


@pytest.mark.engines("docker", "podman")
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_a_job_exits_130_within_2s_and_removes_the_container(
    tmp_path: Path, start: Any, signum: signal.Signals
) -> None:
    started = start(repo(tmp_path, "sig-job", SLOW_JOB))
    wait_until("the job's command", command_started(started, "slow"), started)
    time.sleep(0.3)  # docker exec is running `sleep 60`
    sent = time.monotonic()
    started.proc.send_signal(signum)
    run = assert_interrupted(started, signum, sent)
    slow = read_record(run.path / "jobs" / "slow" / "state.yml", JobState)
    assert slow.status.value == "failed"
    later = read_record(run.path / "jobs" / "later" / "state.yml", JobState)
    assert (later.status.value, later.started_at) == ("skipped", None)
    assert later.skip_reason == "not run: interrupted"
    record = read_record(run.path / "container.yml", ContainerInfo)
    assert record.container_id is not None
    assert record.container_stopped_at is not None
    assert "container-end" in event_names(run.path / "log.jsonl")
    assert_nothing_left()


def test_a_second_sigint_during_teardown_does_not_skip_removing_the_container(
    tmp_path: Path, start: Any
) -> None:
    # `docker rm` takes 1.5 s longer here: the second Ctrl-C lands while it runs.
    shim = docker_shim(
        tmp_path,
        "docker-slow-rm",
        'if [ "$1" = rm ]; then sleep 1.5; fi\nexec "$DOCKER" "$@"\n',
    )
    started = start(repo(tmp_path, "sig-twice", SLOW_JOB), env={"QUIRE_DOCKER": str(shim)})
    wait_until("the job's command", command_started(started, "slow"), started)
    time.sleep(0.3)
    started.proc.send_signal(signal.SIGINT)
    run_dir = started.run_dir()
    assert run_dir is not None

    def teardown_begun() -> bool:
        path = started.run_dir().path / "container.yml"  # type: ignore[union-attr]
        try:
            return read_record(path, ContainerInfo).container_stopped_at is not None
        except Exception:
            return False

    wait_until("teardown", teardown_begun, started, timeout=10)
    time.sleep(0.2)
    for _ in range(3):
        assert started.proc.poll() is None, "quire ended before the second Ctrl-C"
        started.proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    code, out, err = started.wait(30)
    assert code == 130, out + err
    run = started.run_dir()
    assert run is not None and run.state == RunState.failed
    assert result_of(run).reason.value == "interrupted"  # type: ignore[union-attr]
    assert containers_of_run(run.run_id) == []
    names = event_names(run.path / "log.jsonl")
    assert "container-end" in names and "teardown-problem" not in names
    assert_nothing_left()


def test_sigterm_while_the_run_is_being_recorded_still_records_it(
    tmp_path: Path, start: Any
) -> None:
    # Thousands of files: removing the workspace after teardown takes a while.
    files = {f"many/{i // 100}/{i}.txt": f"{i}\n" for i in range(4000)}
    quick = """
    from quire.ci import job

    @job(inputs=["quire/push"])
    def quick(rt):
        rt.sh(["true"], check=True)
    """
    started = start(repo(tmp_path, "sig-record", quick, **files))
    wait_until("the container's end", has_event(started, "container-end"), started)
    started.proc.send_signal(signal.SIGTERM)
    code, out, err = started.wait(30)
    assert code in (0, 130), f"exit {code}: {out + err}"
    run = started.run_dir()
    assert run is not None and run.state in (RunState.complete, RunState.failed)
    assert_records_readable(run)
    assert read_record(run.path / "times.yml", RunTimes).finished_at is not None
    assert_nothing_left()


# --- a container that dies under a job ------------------------------------------------------------

DYING = """
from quire.ci import job

@job(inputs=["quire/push"])
def slow(rt):
    rt.sh(["sleep", "60"])

@job(inputs=["slow"])
def dependent(rt):
    rt.sh(["true"])

@job(inputs=["quire/push"])
def unrelated(rt):
    rt.sh(["true"])
"""


@pytest.mark.engines("docker", "podman")
def test_docker_kill_mid_job_fails_the_run_within_5s_naming_the_dead_container(
    tmp_path: Path, start: Any
) -> None:
    started = start(repo(tmp_path, "killed", DYING))
    wait_until("the job's command", command_started(started, "slow"), started)
    time.sleep(0.3)
    run = started.run_dir()
    assert run is not None
    container = read_record(run.path / "container.yml", ContainerInfo).container_id
    assert container is not None
    killed_at = time.monotonic()
    docker_cli("kill", container)
    code, out, err = started.wait(30)
    took = time.monotonic() - killed_at
    assert code == 3, out + err
    assert took < 5.0, f"the run took {took:.2f}s to end after docker kill"
    print(f"docker kill: exit 3 after {took:.2f}s")
    assert f"container {container[:12]} died" in err
    assert "Traceback" not in out + err
    run = started.run_dir()
    assert run is not None and run.state == RunState.failed
    died = [e for e in events(run.path / "log.jsonl") if e["event"] == "container-died"]
    assert len(died) == 1 and died[0]["container"] == container
    slow = read_record(run.path / "jobs" / "slow" / "state.yml", JobState)
    assert slow.status.value == "failed" and container[:12] in (slow.error or "")
    for later in ("dependent", "unrelated"):
        state = read_record(run.path / "jobs" / later / "state.yml", JobState)
        assert state.status.value == "skipped", later
    assert result_of(run).exit_code == 3
    assert_nothing_left()


# --- orphans: kill -9, then reconcile -------------------------------------------------------------


def kill_9_mid_job(tmp_path: Path, start: Any, name: str) -> tuple[Started, RunDir, str]:
    started = start(repo(tmp_path, name, SLOW_JOB))
    wait_until("the job's command", command_started(started, "slow"), started)
    run = started.run_dir()
    assert run is not None and run.state == RunState.active
    container = read_record(run.path / "container.yml", ContainerInfo).container_id
    assert container is not None
    started.proc.send_signal(signal.SIGKILL)
    started.proc.wait()  # reaped: no zombie that still looks alive
    assert containers_of_run(run.run_id) != [], "nothing left to reconcile"
    return started, run, container


@pytest.mark.engines("docker", "podman")
def test_kill_9_mid_job_then_reconcile_fails_the_run_as_orphaned_and_removes_its_container(
    tmp_path: Path, start: Any
) -> None:
    started, run, container = kill_9_mid_job(tmp_path, start, "orphan")
    t0 = time.monotonic()
    done = quire("ci", "reconcile")
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    label = f"{run.store.repo}/{run.run_id}"
    assert f"orphaned: {label}" in done.stdout
    assert f"container-removed: {container[:12]}" in done.stdout
    assert containers_of_run(run.run_id) == []
    after = started.store.find(run.run_id)
    assert after.state == RunState.failed
    result = result_of(after)
    assert result.reason is not None and result.reason.value == "orphaned"
    assert read_record(after.path / "times.yml", RunTimes).finished_at is not None
    assert not after.workspace.exists()
    again = quire("ci", "reconcile")
    assert again.stdout.strip() == "nothing to reconcile", again.stdout
    assert took < 10
    print(f"reconcile after kill -9: {took:.2f}s")
    assert_nothing_left()


@pytest.mark.engines("docker", "podman")
def test_the_next_run_reconciles_a_killed_runs_leftovers_first(tmp_path: Path, start: Any) -> None:
    started, run, container = kill_9_mid_job(tmp_path, start, "orphan-next")
    quick = start(started.repo)  # same repository, same pipeline: SLOW_JOB, interrupted below
    wait_until("the new run's job", command_started(quick, "slow"), quick)
    assert containers_of_run(run.run_id) == []
    assert started.store.find(run.run_id).state == RunState.failed
    quick.proc.send_signal(signal.SIGINT)
    code, out, err = quick.wait(30)
    assert code == 130, out + err
    assert f"reconcile: orphaned: {run.store.repo}/{run.run_id}" in out + err
    assert f"container-removed: {container[:12]}" in out + err
    assert_nothing_left()


def test_reconcile_never_touches_a_live_run_or_its_container(tmp_path: Path, start: Any) -> None:
    # The run lives until the test says so, however long the reconcile takes on a slow day:
    # the job's Python waits for a file of the test's (unsandboxed, so it can see it).
    without_sandbox()
    go = tmp_path / "go"
    ci = f"""
    import pathlib, time
    from quire.ci import job

    @job(inputs=["quire/push"])
    def wait(rt):
        rt.sh(["true"], check=True)
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.05)
    """
    started = start(repo(tmp_path, "live", ci))
    wait_until("the job's command", command_started(started, "wait"), started)
    run = started.run_dir()
    assert run is not None
    done = quire("ci", "reconcile")
    assert done.returncode == 0
    assert done.stdout.strip() == "nothing to reconcile", done.stdout
    assert containers_of_run(run.run_id) != []
    go.touch()
    code, out, err = started.wait(30)
    assert code == 0, out + err
    assert started.store.find(run.run_id).state == RunState.complete
    assert_nothing_left()


# --- concurrency ----------------------------------------------------------------------------------

SHORT = """
from quire.ci import job

@job(inputs=["quire/push"])
def work(rt):
    rt.sh("sleep 1; hostname", check=True)
"""


def test_concurrent_runs_on_one_repo_and_another_all_complete_in_their_own_dirs(
    tmp_path: Path, start: Any
) -> None:
    one = repo(tmp_path, "busy", SHORT)
    other = repo(tmp_path, "other", SHORT)
    runs = [start(one) for _ in range(3)] + [start(other)]
    for started in runs:
        code, out, err = started.wait(120)
        assert code == 0, out + err
    busy, elsewhere = store_for(one), store_for(other)
    busy_runs, other_runs = list(busy.runs()), list(elsewhere.runs())
    assert len(busy_runs) == 3 and len(other_runs) == 1
    assert len({r.path for r in busy_runs + other_runs}) == 4
    assert all(r.state == RunState.complete for r in busy_runs + other_runs)
    assert busy.find("latest").run_id == max(r.run_id for r in busy_runs)
    assert elsewhere.find("latest").run_id == other_runs[0].run_id
    for store in (busy, elsewhere):
        assert (store.root / os.readlink(store.root / "latest")).is_dir()
    containers = {
        read_record(r.path / "container.yml", ContainerInfo).container_id for r in busy_runs
    }
    assert len(containers) == 3
    assert_nothing_left()


# --- fault injection: SIGKILL at random moments ---------------------------------------------------

FAULT_RUNS = 36
FAULT_BATCH = 6
CHAOS = """
from quire.ci import job

@job(inputs=["quire/push"])
def first(rt):
    rt.sh("sleep 0.2", check=True)

@job(inputs=["first"])
def second(rt):
    rt.sh(["true"], check=True)
"""


def quire_clients_running() -> list[str]:
    """docker clients started by this test's quire processes, by paths in their argv."""
    marks = (str(state_dir()), str(cache_dir()))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in argv for mark in marks):
            found.append(argv)
    return found


def test_random_sigkills_then_reconcile_leave_no_run_active_and_no_container(
    tmp_path: Path, start: Any
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    # One repository per concurrent run, so each process's run is its repository's newest.
    repos = [repo(tmp_path, f"chaos-{n}", CHAOS) for n in range(FAULT_BATCH)]
    killed = 0
    phases: dict[str, int] = {}
    for _ in range(FAULT_RUNS // FAULT_BATCH):
        # The delay counts from launch for a third of the runs (kills while
        # loading and reconciling), else from the run's creation (kills while
        # materializing, building, starting, in a job, tearing down).
        plan = [(start(one), rng.uniform(0, 1.5), rng.random() < 1 / 3) for one in repos]
        t0 = time.monotonic()
        anchors: dict[int, float] = {}
        waiting = list(range(len(plan)))
        while waiting:
            assert time.monotonic() - t0 < 60, f"seed {seed}: runs never started"
            for i in list(waiting):
                started, delay, from_launch = plan[i]
                if started.proc.poll() is not None:
                    waiting.remove(i)
                    continue
                if i not in anchors and (from_launch or started.run_dir() is not None):
                    anchors[i] = t0 if from_launch else time.monotonic()
                if i in anchors and time.monotonic() >= anchors[i] + delay:
                    run = started.run_dir()
                    log = [] if run is None else event_names(run.path / "log.jsonl")
                    phase = log[-1] if log else ("created" if run else "before-run")
                    started.proc.send_signal(signal.SIGKILL)
                    killed += 1
                    phases[phase] = phases.get(phase, 0) + 1
                    waiting.remove(i)
            time.sleep(0.005)
        for started, _, _ in plan:
            started.proc.wait(timeout=120)
    # The docker clients of killed runners live on (their own sessions); let them finish.
    deadline = time.monotonic() + 30
    while quire_clients_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert quire_clients_running() == [], f"seed {seed}"
    done = quire("ci", "reconcile")
    assert done.returncode == 0, f"seed {seed}: {done.stdout}{done.stderr}"
    left = [r for r in all_run_dirs() if r.state in (RunState.pending, RunState.active)]
    assert left == [], f"seed {seed}: runs left pending/active:\n{done.stdout}"
    assert containers_of_store() == [], f"seed {seed}:\n{done.stdout}"
    runs = all_run_dirs()
    assert killed > 0 and runs, f"seed {seed}: killed {killed}, runs {len(runs)}"
    reasons: dict[str, int] = {}
    for run in runs:
        assert_records_readable(run)
        if run.state == RunState.failed:
            reason = result_of(run).reason
            assert reason is not None
            reasons[reason.value] = reasons.get(reason.value, 0) + 1
        else:
            reasons[run.state.value] = reasons.get(run.state.value, 0) + 1
    print(f"seed {seed}: {FAULT_RUNS} runs, {killed} SIGKILLed at {phases}; runs: {reasons}")
    assert_nothing_left()


# --- resource limits and timeouts -----------------------------------------------------------------

LIMITS = """
import json, subprocess
from quire.ci import job

@job(inputs=["quire/push"])
def limits(rt):
    me = rt.sh(["hostname"], check=True).stdout.strip()
    seen = json.loads(subprocess.run(
        ["docker", "inspect", "--format",
         "{{json .Config.Labels}}|{{.HostConfig.NanoCpus}}|{{.HostConfig.Memory}}"
         "|{{.HostConfig.NetworkMode}}", me],
        check=True, capture_output=True, text=True,
    ).stdout.split("|")[0])
    return {
        "memory": rt.sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
                        " || cat /sys/fs/cgroup/memory.max", check=True).stdout.strip(),
        "cpu": rt.sh("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null"
                     " || cut -d' ' -f1 /sys/fs/cgroup/cpu.max", check=True).stdout.strip(),
        "interfaces": rt.sh(["ls", "/sys/class/net"], check=True).stdout.split(),
        "net_dev": rt.sh(["cat", "/proc/net/dev"], check=True).stdout,
        "labels": seen,
    }
"""


def test_docker_limits_from_the_config_file_reach_the_container(tmp_path: Path) -> None:
    team = f"reliability-{secrets.token_hex(3)}"
    # The job's Python inspects its container through the engine's CLI: unsandboxed.
    without_sandbox(
        f'[docker]\ncpus = 0.5\nmemory = "64m"\nnetwork = false\nlabels = {{ team = "{team}" }}\n'
    )
    done = subprocess.run(
        [*QUIRE_RUN, str(repo(tmp_path, "limits", LIMITS))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [r for r in all_run_dirs() if r.state == RunState.complete]
    assert len(runs) == 1
    out = read_record(runs[0].path / "jobs" / "limits" / "state.yml", JobState).outputs
    assert out["memory"] == str(64 * 1024 * 1024)
    assert out["cpu"] == "50000"  # half of the 100000 us period
    assert out["interfaces"] == ["lo"]
    assert [line.split(":")[0].strip() for line in out["net_dev"].splitlines()[2:]] == ["lo"]
    assert out["labels"]["team"] == team
    assert out["labels"]["quire.store"] == str(state_dir())
    assert_nothing_left()


JOB_TIMEOUT = """
from quire.ci import job

@job(inputs=["quire/push"], timeout=2)
def bounded(rt):
    rt.sh(["sleep", "1"], check=True)
    rt.sh(["sleep", "41"])

@job(inputs=["quire/push"])
def after(rt):
    return {"processes": rt.sh(["ps", "-o", "args"], check=True).stdout}
"""


def test_a_job_timeout_stops_the_job_inside_the_container_and_later_jobs_run(
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    done = subprocess.run(
        [*QUIRE_RUN, str(repo(tmp_path, "job-timeout", JOB_TIMEOUT))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < 20
    (run,) = all_run_dirs()
    bounded = read_record(run.path / "jobs" / "bounded" / "state.yml", JobState)
    assert bounded.status.value == "failed"
    assert "timeout" in (bounded.error or "").lower(), bounded.error
    assert bounded.duration_s is not None and 1.5 < bounded.duration_s < 6
    after = read_record(run.path / "jobs" / "after" / "state.yml", JobState)
    assert after.status.value == "success"
    assert "sleep 41" not in after.outputs["processes"]
    assert_nothing_left()
