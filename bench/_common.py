"""Shared scaffolding for the benchmarks in bench/ (not a benchmark itself).

Every benchmark gets a `Scratch`: a temp dir holding a fresh git repository
(with `.quire/ci.py` and, for docker, `.quire/Dockerfile`), its own
QUIRE_STATE_DIR / QUIRE_CACHE_DIR / QUIRE_CONFIG, and a unique repository
name so that every image (`quire-ci/<repo>:*`, the busybox base image) and
container (label `quire.repo=<repo>`) it creates can be found and removed at
the end without touching anybody else's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
QUIRE = str(VENV_BIN / "quire")
BUSYBOX = "/usr/bin/busybox"

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_SYSTEM": "/dev/null",
    "GIT_AUTHOR_NAME": "quire bench",
    "GIT_AUTHOR_EMAIL": "bench@quire.invalid",
    "GIT_COMMITTER_NAME": "quire bench",
    "GIT_COMMITTER_EMAIL": "bench@quire.invalid",
}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(func: Callable[[], object]) -> float:
    """Wall seconds `func()` takes."""
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run, checked, output captured (the raw side of every benchmark)."""
    return subprocess.run(
        list(argv), check=True, stdin=subprocess.DEVNULL, capture_output=True, **kwargs
    )  # type: ignore[call-overload]


def docker_available() -> bool:
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass
class Row:
    """One line of a result table. `lower_is_better` targets are `value <= target`."""

    name: str
    quire: float | None
    raw: float | None
    target: float | None
    unit: str = "s"
    # What `target` is compared with: "ratio" (quire/raw) or "quire" (absolute).
    check: str = "ratio"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.quire is None or self.raw is None or self.raw == 0:
            return None
        return self.quire / self.raw

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        value = self.ratio if self.check == "ratio" else self.quire
        if value is None:
            return "?"
        return "PASS" if value <= self.target else "MISS"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:.3g} {unit}".strip()


def print_table(title: str, rows: Sequence[Row]) -> None:
    header = ("measure", "quire", "raw", "ratio", "target", "result")
    lines = []
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        if row.target is None:
            target = "-"
        elif row.check == "ratio":
            target = f"<= {row.target:.2f}x"
        else:
            target = f"<= {_fmt(row.target, row.unit)}"
        lines.append(
            (
                row.name,
                _fmt(row.quire, row.unit),
                _fmt(row.raw, row.unit),
                ratio,
                target,
                row.verdict + (f"  {row.note}" if row.note else ""),
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    print(f"\n{title}")
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header).rstrip())
    print(fmt.format(*("-" * w for w in widths)).rstrip())
    for line in lines:
        print(fmt.format(*line).rstrip())
    sys.stdout.flush()


@dataclass
class Scratch:
    """A temp dir with a git repository and quire's state/cache/config pointed inside it."""

    root: Path
    repo_name: str
    base_image: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.root / self.repo_name

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def image_repository(self) -> str:
        return f"quire-ci/{self.repo_name}"

    def git(self, *args: str) -> str:
        done = run(["git", *args], cwd=self.repo, env={**os.environ, **GIT_ENV})
        return done.stdout.decode().strip()

    def commit(self, files: dict[str, str]) -> str:
        for name, content in files.items():
            target = self.repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(content))
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", "bench")
        return self.git("rev-parse", "HEAD")

    def build_base_image(self) -> str:
        """`FROM scratch` + static busybox, tagged uniquely for this benchmark."""
        tag = f"quire-bench-base-{self.repo_name}:latest"
        context = self.root / "base-image"
        context.mkdir()
        shutil.copy(BUSYBOX, context / "busybox")
        (context / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        )
        run(["docker", "build", "-q", "-t", tag, str(context)])
        self.base_image = tag
        return tag

    def cleanup_docker(self) -> None:
        """Remove every container and image this scratch created (and nothing else)."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=quire.repo={self.repo_name}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        ids += subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=quire-bench={self.repo_name}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *set(ids)], capture_output=True)
        # quire names the repository `<folder>-<8 hex>`: its images are quire-ci/<name>-*.
        tags = []
        listing = ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter"]
        for reference in (self.image_repository, f"{self.image_repository}-*"):
            tags += subprocess.run(
                [*listing, f"reference={reference}"],
                capture_output=True,
                text=True,
            ).stdout.split()
        if self.base_image:
            tags.append(self.base_image)
        tags = [t for t in tags if not t.endswith(":<none>")]
        if tags:
            subprocess.run(["docker", "image", "rm", "-f", *tags], capture_output=True)


@contextmanager
def scratch(prefix: str, *, docker: bool = False) -> Iterator[Scratch]:
    """A `Scratch` whose env is also applied to os.environ (and plumbum's copy of it)."""
    root = Path(tempfile.mkdtemp(prefix=f"quire-bench-{prefix}-"))
    name = f"qbench-{prefix}-{secrets.token_hex(3)}"
    sc = Scratch(root=root, repo_name=name)
    sc.repo.mkdir()
    sc.git("init", "-q", "-b", "main")
    sc.env = {
        "QUIRE_STATE_DIR": str(sc.state),
        "QUIRE_CACHE_DIR": str(sc.cache),
        "QUIRE_CONFIG": str(root / "config.toml"),  # absent: defaults, no secrets
        **GIT_ENV,
    }
    saved = {k: os.environ.get(k) for k in sc.env}
    os.environ.update(sc.env)
    try:
        from plumbum import local  # quire spawns through plumbum, which copied os.environ

        local.env.update(**sc.env)
    except ImportError:
        pass
    try:
        if docker:
            sc.build_base_image()
        yield sc
    finally:
        if docker:
            sc.cleanup_docker()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def dockerfile(base_image: str) -> str:
    return f"FROM {base_image}\n"


def quire_env(sc: Scratch) -> dict[str, str]:
    """The environment for a `quire` subprocess.

    Without PYTHONDONTWRITEBYTECODE, which some shells set: an installed quire
    starts from its bytecode cache (pip writes it at install; the warm-up run
    writes it for an editable install), and so does every run measured here.
    """
    env = {**os.environ, **sc.env, "NO_COLOR": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@dataclass
class InProcessRun:
    """A run record, workspace and executor built in-process, as the orchestrator does."""

    executor: object
    runtime: object
    job_log: Path
    run_path: Path


@contextmanager
def in_process_run(sc: Scratch, sha: str, executor_name: str) -> Iterator[InProcessRun]:
    """Create a run of `sc.repo` at `sha`, materialize it, enter the executor, yield a Runtime.

    Leaving the block tears the executor down (docker: `docker rm --force` + untag).
    """
    from quire.ci.events import JobFinished, JobStarted
    from quire.ci.pipeline import JobDef, Pipeline
    from quire.ci.run import workspace as workspaces
    from quire.ci.run.jobhost import Named, ShRequest, parse
    from quire.ci.run.orchestrator import make_executor, outlet_for
    from quire.ci.run.redact import Redactor
    from quire.ci.run.runtime import JobContext, JobServer
    from quire.ci.store.records import ExecutorKind, JobState, JobStatus, RunMeta, utcnow
    from quire.ci.store.runs import RunState, RunStore
    from quire.config import Secrets
    from quire.jobhost.protocol import Channel
    from quire.jobhost.runtime import JobLink, Runtime

    store = RunStore(sc.repo_name)
    run_dir = store.create(
        lambda run_id: RunMeta(
            run_id=run_id,
            repo=sc.repo_name,
            git_dir=str(sc.repo / ".git"),
            revision="HEAD",
            sha=sha,
            ref="refs/heads/main",
            pushed_at=utcnow(),
            executor=ExecutorKind(executor_name),
        )
    )
    run_dir.transition(RunState.active)
    workspaces.materialize(sc.repo / ".git", sha, run_dir.workspace)
    outlet = outlet_for(run_dir, Redactor(), [])
    try:
        executor = make_executor(_setup(run_dir, ExecutorKind(executor_name), outlet))
        job = JobDef(id="bench", inputs=("quire/push",), func=lambda rt: None, line=None)
        pipeline = Pipeline(jobs={"bench": job}, order=["bench"])
        job_log = run_dir.path / "jobs" / "bench" / "log.jsonl"
        with executor as ex:
            outlet.emit(JobStarted("bench"))
            ctx = JobContext(
                job=job,
                pipeline=pipeline,
                executor=ex,
                outputs={},
                secrets=Secrets(),
                outlet=outlet,
                capture_limit=4 * 1024 * 1024,
            )
            # The job side talks to quire's side over a socketpair, as a job process does:
            # every rt.sh is a real request and answer of the job host protocol.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            server = JobServer(ctx)

            def serve() -> None:
                channel = Channel(ours)
                while (message := channel.receive()) is not None:
                    request = parse(message)
                    if isinstance(request, ShRequest | Named):
                        channel.send(server.handle(request))

            threading.Thread(target=serve, daemon=True).start()
            runtime = Runtime(JobLink(Channel(theirs)), "bench")
            try:
                yield InProcessRun(ex, runtime, job_log, run_dir.path)
            finally:
                theirs.close()
            outlet.emit(JobFinished(JobState(job_id="bench", status=JobStatus.success)))
    finally:
        outlet.close()
        workspaces.remove(run_dir.workspace)


def _setup(run_dir: Any, kind: Any, outlet: Any) -> Any:
    from quire.ci.run.executors.base import ExecutorSetup
    from quire.config import DockerSettings

    return ExecutorSetup(
        kind=kind,
        workspace=run_dir.workspace,
        run_id=run_dir.run_id,
        repo=run_dir.store.repo,
        store_label=run_dir.store.label,
        docker=DockerSettings(),
        outlet=outlet,
    )


def _container_gone_errors() -> tuple[type[BaseException], ...]:
    from quire.errors import ContainerDied

    return (ContainerDied, subprocess.CalledProcessError)


# A concurrent `quire ci reconcile` using ANOTHER state dir removes every container
# labelled quire.run-id that its own store does not know: ours included.
CONTAINER_GONE = _container_gone_errors()


@contextmanager
def docker_executor(sc: Scratch, sha: str) -> Iterator[object]:
    """A DockerExecutor for a fresh run of `sc.repo` at `sha`, NOT entered yet.

    The caller enters and leaves it (to time setup and teardown apart).
    """
    from quire.ci.run import workspace as workspaces
    from quire.ci.run.executors.docker import DockerExecutor
    from quire.ci.run.orchestrator import outlet_for
    from quire.ci.run.redact import Redactor
    from quire.ci.store.records import ExecutorKind, RunMeta, utcnow
    from quire.ci.store.runs import RunState, RunStore

    store = RunStore(sc.repo_name)
    run_dir = store.create(
        lambda run_id: RunMeta(
            run_id=run_id,
            repo=sc.repo_name,
            git_dir=str(sc.repo / ".git"),
            revision="HEAD",
            sha=sha,
            ref="refs/heads/main",
            pushed_at=utcnow(),
            executor=ExecutorKind.docker,
        )
    )
    run_dir.transition(RunState.active)
    workspaces.materialize(sc.repo / ".git", sha, run_dir.workspace)
    outlet = outlet_for(run_dir, Redactor(), [])
    try:
        yield DockerExecutor(_setup(run_dir, ExecutorKind.docker, outlet))
    finally:
        outlet.close()
        workspaces.remove(run_dir.workspace)
