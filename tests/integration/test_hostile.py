"""What a person who can push can do to the machine that runs quire: hostile pipelines,
pushed through a docker-mode worker (running as root, as CI does) and run with `quire ci
run --executor docker`, each checked from the host's side.

One hostile `.quire/ci.py` tries, at module level and again in a job's Python, everything
issue 20 listed: read the worker's config file (another repository's secret is in it),
/etc/shadow, every process's command line and environment, the docker CLI and socket,
another repository's run logs; append a forged "complete" note to another repository's
commit, write into the state directory and another repository's hooks, connect to a TCP
server this test listens with on 127.0.0.1, and `rt.secret` a secret scoped to another
repository. Whatever it gets it puts in its outputs and its log, so a leak lands in the
records the test then searches. The test looks on the host: files not written, note not
added, no container made, no connection seen, secret values and the other run's log in
no record or log of the hostile run, the run recorded once with the right exit code, and
no process of the run left (every process the pipeline starts carries a marker name).

Then what host mode (and docker mode with `[docker] sandbox = false`) leaves a pusher:
quire's own reach. And, in both executors, the four ways a job's Python used to break its
run (`os.fork()`, `os._exit(0)` while another job failed, a non-daemon thread, a job that
ignores SIGTERM and SIGINT then Ctrl-C): each costs at most its own job, the run is
recorded once with the right exit code, and nothing it started is left.

docs/security.md cites these tests, sentence by sentence.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from quire.ci.store.runs import store_for
from quire.paths import state_dir
from quire.service.notes import read_notes
from tests.helpers import GIT_ENV, git, make_repo
from tests.integration.conftest import containers_labelled
from tests.integration.support import BASE_IMAGE, SESSION_PREFIX, docker_cli
from tests.integration.test_docker_runs import DOCKERFILE, repo_with
from tests.integration.test_worker import all_done, push, pushable, rows, wait_for, worker

pytestmark = pytest.mark.integration

QUIRE = [sys.executable, "-m", "quire"]
ENV_SECRET_VARIABLE = "QUIRE_ITEST_OTHER_ENV_SECRET"

# --- the hostile pipeline -------------------------------------------------------------------------

# Every attempt returns what it got ("GOT ...", data included, so a leak reaches the run's
# records) or the exception that stopped it. `mark()` names the process (/proc/PID/comm)
# with the test's marker: forks inherit the name, so the host can find them.
HOSTILE = """\
import ctypes, hashlib, json, os, socket, subprocess, sys
from quire.ci import job

T = json.loads(TARGETS)


def mark():
    ctypes.CDLL(None).prctl(15, T["marker"].encode(), 0, 0, 0)


def attempt(fn):
    try:
        return "GOT " + str(fn())
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"


def read(path):
    with open(path, "rb") as handle:
        return handle.read().decode(errors="replace")


def write(path):
    with open(path, "w") as handle:
        handle.write("written by a pushed ci.py\\n")
    return path


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20)


def processes():
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            found[pid] = attempt(lambda: read(f"/proc/{pid}/cmdline").replace("\\0", " "))
    return json.dumps(found)


def environments():
    seen = [attempt(lambda: read(f"/proc/{p}/environ")) for p in os.listdir("/proc") if p.isdigit()]
    return json.dumps({"own": dict(os.environ), "proc": seen})


def state_files():
    if not os.path.exists(T["state"]):
        raise FileNotFoundError(T["state"])
    texts = []
    for root, _dirs, files in os.walk(T["state"]):
        texts += [attempt(lambda: read(os.path.join(root, name))) for name in files]
    return "".join(texts)


def docker_socket(path):
    body = json.dumps({"Image": T["image"], "Cmd": ["true"]})
    request = (
        f"POST /containers/create?name={T['container']}-socket HTTP/1.0\\r\\n"
        f"Content-Type: application/json\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n{body}"
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(request.encode())
        return sock.recv(4096)


def tcp():
    with socket.create_connection(("127.0.0.1", T["port"]), timeout=5) as sock:
        sock.sendall(b"hello from a pushed ci.py")
        return "connected"


def attempts():
    forged = json.dumps({"run_id": "forged", "state": "complete", "v": 1})
    return {
        "config": attempt(lambda: read(T["config"])),
        "shadow": attempt(lambda: read("/etc/shadow")),
        "processes": attempt(processes),
        "environments": attempt(environments),
        "docker_cli": attempt(
            lambda: run(["docker", "run", "--name", T["container"], T["image"], "true"])
        ),
        "docker_sock": attempt(lambda: docker_socket("/var/run/docker.sock")),
        "docker_run_sock": attempt(lambda: docker_socket("/run/docker.sock")),
        "other_log": attempt(lambda: read(T["other_log"])),
        "state_files": attempt(state_files),
        "note": attempt(
            lambda: run(["git", "-C", T["other_bare"], "notes", "--ref=quire", "append",
                         "-m", forged, T["other_sha"]])
        ),
        "note_ref": attempt(lambda: write(T["other_bare"] + "/refs/notes/quire")),
        "hook": attempt(lambda: write(T["other_bare"] + "/hooks/post-receive")),
        "state_write": attempt(lambda: write(T["state"] + "/written-by-ci-py")),
        "tcp": attempt(tcp),
    }


mark()
AT_LOAD = attempts()


@job(inputs=["quire/push"])
def hostile(rt):
    mark()
    got = {f"load:{key}": value for key, value in AT_LOAD.items()}
    got.update({f"job:{key}": value for key, value in attempts().items()})
    got["job:other_secret"] = attempt(lambda: rt.secret("other_repos_deploy_key"))
    got["job:other_env_secret"] = attempt(lambda: rt.secret("other_env_key"))
    own = hashlib.sha256(rt.secret("own_key").encode()).hexdigest()
    shared = hashlib.sha256(rt.secret("shared_key").encode()).hexdigest()
    got["job:own_secret"] = "readable" if own == T["own_sha"] else "wrong value"
    got["job:shared_secret"] = "readable" if shared == T["shared_sha"] else "wrong value"
    # The commands: in the run's container, which sees /work and not the host.
    def sh(cmd):
        done = rt.sh(cmd, timeout=20)
        return f"exit {done.exit}: {done.stdout} {done.stderr}"

    got["container:docker_sock"] = sh("ls /var/run/docker.sock /run/docker.sock")
    got["container:state"] = sh(["ls", T["state"], T["other_bare"]])
    got["container:tcp"] = sh(f"echo hello | nc 127.0.0.1 {T['port']}")
    got["container:work"] = sh(["ls", "-a", "/work"])
    got["container:net"] = sh(["ls", "/sys/class/net"])
    print(json.dumps(got))
    return {"attempts": got}
"""

OTHER = """\
from quire.ci import job


@job(inputs=["quire/push"])
def deploy(rt):
    key = rt.secret("other_repos_deploy_key")
    rt.sh(["echo", "OTHER_LOG_MARKER", key], check=True)
"""

# Attempts that must fail in the sandbox (all of them but the secrets the run may read).
ATTEMPTS = (
    "config",
    "shadow",
    "docker_cli",
    "docker_sock",
    "docker_run_sock",
    "other_log",
    "state_files",
    "note",
    "note_ref",
    "hook",
    "state_write",
    "tcp",
)


@dataclass
class Scene:
    """Another repository with a run, a secret and a commit; the config; a TCP server."""

    tmp_path: Path
    targets: dict[str, Any]
    other_bare: Path
    other_secret: str
    env_secret: str
    log_marker: str
    server: socket.socket
    state: Path
    config: Path

    def pipeline(self) -> str:
        return HOSTILE.replace("TARGETS", repr(json.dumps(self.targets)), 1)

    def files(self) -> dict[str, str | bytes]:
        return {".quire/ci.py": self.pipeline(), ".quire/Dockerfile": DOCKERFILE}


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    hostile_name = f"{SESSION_PREFIX}-hostile"
    other_work = tmp_path / f"{SESSION_PREFIX}-other"
    other_sha = make_repo(other_work, {".quire/ci.py": OTHER}, bare_clone=True)
    other_bare = Path(f"{other_work}.git")
    other_secret = f"other-deploy-key-{secrets.token_hex(8)}"
    env_secret = f"other-env-secret-{secrets.token_hex(8)}"
    own_secret = f"own-key-{secrets.token_hex(8)}"
    shared_secret = f"shared-key-{secrets.token_hex(8)}"
    monkeypatch.setenv(ENV_SECRET_VARIABLE, env_secret)
    other = f"{SESSION_PREFIX}-other"
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "[secrets]\n"
        f'other_repos_deploy_key = {{ value = "{other_secret}", repos = ["{other}"] }}\n'
        f'other_env_key = {{ env = "{ENV_SECRET_VARIABLE}", repos = ["{other}"] }}\n'
        f'own_key = {{ value = "{own_secret}", repos = ["{hostile_name}"] }}\n'
        f'shared_key = "{shared_secret}"\n'
    )
    # The other repository's own run: its log holds a marker (and its secret, masked).
    ran = subprocess.run(
        [*QUIRE, "ci", "run", "--executor", "host", "--repo", str(other_bare)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **GIT_ENV},
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (other_log,) = store_for(other_bare).root.glob("complete/*/jobs/deploy/log.jsonl")
    assert "OTHER_LOG_MARKER" in other_log.read_text()
    assert other_secret not in other_log.read_text()  # masked in its own run
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    state = state_dir()
    targets = {
        "marker": f"qh{secrets.token_hex(5)}",
        "config": str(config),
        "state": str(state),
        "other_log": str(other_log),
        "other_bare": str(other_bare),
        "other_sha": other_sha,
        "port": server.getsockname()[1],
        "image": BASE_IMAGE,
        "container": f"{SESSION_PREFIX}-hostile-{secrets.token_hex(3)}",
        "own_sha": hashlib.sha256(own_secret.encode()).hexdigest(),
        "shared_sha": hashlib.sha256(shared_secret.encode()).hexdigest(),
    }
    made = Scene(
        tmp_path,
        targets,
        other_bare,
        other_secret,
        env_secret,
        "OTHER_LOG_MARKER",
        server,
        state,
        config,
    )
    try:
        yield made
    finally:
        server.close()
        for name in (made.targets["container"], f"{made.targets['container']}-socket"):
            docker_cli("rm", "--force", name, check=False)


# --- what the host sees ---------------------------------------------------------------------------


def run_dirs(state: Path, run_id: str) -> list[Path]:
    """Every directory recorded for `run_id`, in any repository and any state."""
    return sorted(state.glob(f"runs/*/*/{run_id}"))


def alive_marked(marker: str) -> list[str]:
    """Live processes (not zombies) named `marker` or with it in their command line."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z":
            continue
        if comm == marker or marker in cmdline:
            found.append(f"{pid}: {comm}: {cmdline[:200]}")
    return found


def marked_pids(marker: str) -> list[int]:
    return [int(entry.split(":")[0]) for entry in alive_marked(marker)]


def host_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as the host sees it."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def nothing_of_the_run_left(marker: str, run_ids: list[str]) -> None:
    """No process the pipeline started (bounded wait: SIGKILL is asynchronous) and no
    container of the run."""
    deadline = time.monotonic() + 10
    while alive_marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive_marked(marker), alive_marked(marker)
    for run_id in run_ids:
        assert not containers_labelled(f"quire.run-id={run_id}"), run_id


def recorded_once(state: Path, run_id: str, expected: str) -> Path:
    (found,) = run_dirs(state, run_id)
    assert found.parent.name == expected, found
    return found


def attempts_of(run: Path) -> dict[str, str]:
    record = yaml.safe_load((run / "jobs" / "hostile" / "state.yml").read_text())
    assert record["status"] == "success", record
    got: dict[str, str] = record["outputs"]["attempts"]
    return got


def files_under(root: Path) -> Iterator[Path]:
    return (path for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def assert_nothing_reached(scene: Scene, run: Path, said: str) -> None:
    """The host side after a hostile run (`said`: what quire and the worker printed)."""
    got = attempts_of(run)
    for where in ("load", "job"):
        for key in ATTEMPTS:
            assert not got[f"{where}:{key}"].startswith("GOT"), (where, key, got[f"{where}:{key}"])
    # The sandbox's /proc: only the sandbox's own processes (bwrap's init, the job host and
    # its jobs); none of the host's, not the test's, not the worker's.
    for where in ("load", "job"):
        listed = json.loads(got[f"{where}:processes"].removeprefix("GOT "))
        commands = [c for c in listed.values() if c.startswith("GOT ")]
        assert commands and len(listed) <= 4, listed
        assert all("bwrap" in c or "quire.jobhost" in c for c in commands), listed
    assert got["job:other_secret"].startswith("UnknownSecret"), got["job:other_secret"]
    assert got["job:other_env_secret"].startswith("UnknownSecret"), got["job:other_env_secret"]
    assert "may read: own_key, shared_key;" in got["job:other_secret"]  # names only
    assert (got["job:own_secret"], got["job:shared_secret"]) == ("readable", "readable")
    for key in ("docker_sock", "state", "tcp"):
        assert not got[f"container:{key}"].startswith("exit 0"), (key, got[f"container:{key}"])
    assert ".quire" in got["container:work"].split()
    assert "eth0" in got["container:net"].split()  # the network is on by default

    # Files: nothing written in the state dir or the other repository.
    assert not (scene.state / "written-by-ci-py").exists()
    assert not (scene.other_bare / "hooks" / "post-receive").exists()
    assert not (scene.other_bare / "refs" / "notes" / "quire").exists()
    assert git(scene.other_bare, "for-each-ref", "refs/notes") == ""
    assert git(scene.other_bare, "notes", "--ref=quire", "list") == ""
    # No container made through the CLI or the socket.
    for name in (scene.targets["container"], f"{scene.targets['container']}-socket"):
        assert docker_cli("container", "inspect", name, check=False).returncode != 0, name
    # No connection reached the test's server.
    with pytest.raises(BlockingIOError):
        scene.server.accept()
    # Secret values, the host's /etc/shadow, the other run's log: in no record or log of
    # this run, nor in what quire printed (the other run's own files aside).
    shadow = [line for line in Path("/etc/shadow").read_text().splitlines() if line.strip()]
    needles = [scene.other_secret, scene.env_secret, *shadow]
    for path in files_under(scene.state):
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, (needle, path)
        if scene.log_marker.encode() in data:
            assert store_for(scene.other_bare).root in path.parents, path
    for needle in [*needles, scene.log_marker]:
        assert needle not in said, needle


# --- pushed to a docker-mode worker ---------------------------------------------------------------


def test_a_pushed_pipeline_reaches_nothing_of_the_host_through_a_docker_worker(
    scene: Scene,
) -> None:
    tmp_path = scene.tmp_path
    assert os.geteuid() == 0, "the worker runs as root here, as CI does"
    bare, work = pushable(tmp_path, "hostile", scene.files())
    with worker(tmp_path, "--executor", "docker") as proc:
        push(work, "HEAD:main")
        wait_for(all_done(1), "the hostile run", proc=proc)
    (row,) = rows()
    assert (row.executor, row.outcome) == ("docker", "complete"), row
    (note,) = read_notes(bare, git(work, "rev-parse", "HEAD"))  # the worker's own, once
    assert (note.run_id, note.state) == (row.run_id, "complete")
    run = recorded_once(scene.state, row.run_id, "complete")
    said = (tmp_path / "worker.log").read_text(errors="replace")
    assert_nothing_reached(scene, run, said)
    nothing_of_the_run_left(scene.targets["marker"], [row.run_id])


# --- run with `quire ci run --executor docker` ----------------------------------------------------


def quire_run(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QUIRE, "ci", "run", "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env={**os.environ, **GIT_ENV},
    )


def test_quire_ci_run_in_docker_mode_keeps_a_hostile_pipeline_from_the_host(
    scene: Scene,
) -> None:
    repo = repo_with(scene.tmp_path, "hostile", scene.files())
    done = quire_run(repo, "--executor", "docker")
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = store_for(repo).find("latest").run_id
    run = recorded_once(scene.state, run_id, "complete")
    assert_nothing_reached(scene, run, done.stdout + done.stderr)
    nothing_of_the_run_left(scene.targets["marker"], [run_id])


# --- host mode, and docker mode without the sandbox: for pushes you trust -------------------------

TRUSTED = """\
import hashlib
from quire.ci import job
from quire.errors import UnknownSecret

CONFIG = {config!r}


@job(inputs=["quire/push"])
def look(rt):
    try:
        rt.secret("other_repos_deploy_key")
        other = "readable"
    except UnknownSecret:
        other = "unknown"
    config = open(CONFIG).read()
    return {{
        "config_sha": hashlib.sha256(config.encode()).hexdigest(),
        "other_secret": other,
        "command_uid": rt.sh(["id", "-u"], check=True).stdout.strip(),
    }}
"""


@pytest.mark.parametrize("mode", ["host", "docker-unsandboxed"])
def test_host_mode_and_an_unsandboxed_docker_mode_give_the_pipeline_quires_own_reach(
    scene: Scene, mode: str
) -> None:
    if mode == "docker-unsandboxed":
        with scene.config.open("a") as config:
            config.write("\n[docker]\nsandbox = false\n")
    files: dict[str, str | bytes] = {
        ".quire/ci.py": TRUSTED.format(config=str(scene.config)),
        ".quire/Dockerfile": DOCKERFILE,
    }
    repo = repo_with(scene.tmp_path, f"trusted-{mode}", files)
    done = quire_run(repo, "--executor", "host" if mode == "host" else "docker")
    assert done.returncode == 0, done.stdout + done.stderr
    run = store_for(repo).find("latest")
    outputs = yaml.safe_load((run.path / "jobs" / "look" / "state.yml").read_text())["outputs"]
    # The job's Python read the worker's config file, secrets and all...
    assert outputs["config_sha"] == hashlib.sha256(scene.config.read_bytes()).hexdigest()
    # ...yet rt.secret still answers only what the repository may read.
    assert outputs["other_secret"] == "unknown"
    # Host mode: commands run on the host as quire's user.
    if mode == "host":
        assert outputs["command_uid"] == str(os.geteuid())


# --- a job's Python cannot break its run ----------------------------------------------------------

BREAKERS = """\
import ctypes, os, subprocess, sys, threading, time
from quire.ci import job

MARKER = {marker!r}


def mark():
    ctypes.CDLL(None).prctl(15, MARKER.encode(), 0, 0, 0)


@job(inputs=["quire/push"])
def fails(rt):
    raise RuntimeError("an ordinary failure")


@job(inputs=["quire/push"])
def forks(rt):
    mark()
    ready, told = os.pipe()
    if os.fork() == 0:
        os.write(told, b"x")
        print("from the fork")
        time.sleep(300)
        os._exit(0)
    os.read(ready, 1)
    return {{"who": "parent"}}


@job(inputs=["quire/push"])
def quits(rt):
    mark()
    os._exit(0)


@job(inputs=["quits"])
def after_quits(rt):
    pass


def linger():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", MARKER])
    time.sleep(300)


@job(inputs=["quire/push"])
def threads(rt):
    mark()
    threading.Thread(target=linger).start()
    return {{"started": True}}
"""


@pytest.mark.parametrize("executor", ["docker", "host"])
def test_fork_exit_and_threads_in_a_job_cost_at_most_that_job(
    tmp_path: Path, executor: str
) -> None:
    marker = f"qh{secrets.token_hex(5)}"
    files: dict[str, str | bytes] = {
        ".quire/ci.py": BREAKERS.format(marker=marker),
        ".quire/Dockerfile": DOCKERFILE,
    }
    repo = repo_with(tmp_path, f"breakers-{executor}", files)
    started = time.monotonic()
    done = quire_run(repo, "--executor", executor)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < 60, took  # neither the thread's nor the fork's 300 s
    run_id = store_for(repo).find("latest").run_id
    run = recorded_once(state_dir(), run_id, "failed")
    states = {
        job: yaml.safe_load((run / "jobs" / job / "state.yml").read_text())
        for job in ("fails", "forks", "quits", "after_quits", "threads")
    }
    assert {job: s["status"] for job, s in states.items()} == {
        "fails": "failed",
        "forks": "success",
        "quits": "failed",
        "after_quits": "skipped",
        "threads": "success",
    }
    assert states["forks"]["outputs"] == {"who": "parent"}
    assert "exited with status 0 before the job ended" in states["quits"]["error"]
    assert b"from the fork" not in (run / "jobs" / "forks" / "log.jsonl").read_bytes()
    nothing_of_the_run_left(marker, [run_id])


STUBBORN = """\
import ctypes, signal, time
from quire.ci import job


@job(inputs=["quire/push"])
def stubborn(rt):
    ctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rt.log("ignoring signals now")
    while True:
        time.sleep(1)
"""


@pytest.mark.parametrize("executor", ["docker", "host"])
def test_ctrl_c_ends_a_job_that_ignores_signals_within_the_grace(
    tmp_path: Path, executor: str
) -> None:
    marker = f"qh{secrets.token_hex(5)}"
    files: dict[str, str | bytes] = {
        ".quire/ci.py": STUBBORN.format(marker=marker),
        ".quire/Dockerfile": DOCKERFILE,
    }
    repo = repo_with(tmp_path, f"stubborn-{executor}", files)
    proc = subprocess.Popen(
        [*QUIRE, "ci", "run", "--repo", str(repo), "--executor", executor],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env={**os.environ, **GIT_ENV},
    )
    try:
        store = store_for(repo)

        def ignoring() -> bool:
            assert proc.poll() is None, proc.communicate()
            logs = list(store.root.glob("active/*/jobs/stubborn/log.jsonl"))
            return bool(logs) and "ignoring signals now" in logs[0].read_text()

        wait_for(ignoring, "the job to ignore its signals", timeout=90)
        # Seen from the host, the job's process has quire's uid (root here: the sandbox
        # maps its uid 65534 to the caller's); in docker mode no capability and no new
        # privileges, in host mode all that quire's user has.
        (status,) = [host_status(pid) for pid in marked_pids(marker)]
        assert status["Uid"].split() == [str(os.geteuid())] * 4, status
        if executor == "docker":
            assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0, status
            assert status["NoNewPrivs"] == "1", status
        else:
            assert status["CapEff"] == host_status(os.getpid())["CapEff"], status
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert took < 5 + 3, took  # the grace (5 s), then SIGKILL
    run_id = store.find("latest").run_id
    run = recorded_once(state_dir(), run_id, "failed")
    result = yaml.safe_load((run / "result.yml").read_text())
    assert result["reason"] == "interrupted", result
    job = yaml.safe_load((run / "jobs" / "stubborn" / "state.yml").read_text())
    assert job["status"] == "failed", job
    nothing_of_the_run_left(marker, [run_id])
