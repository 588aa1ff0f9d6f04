"""Engines side by side: each step of a docker-mode run, and a whole do-nothing run.

Engines (each with the busybox base image built on it):

- docker: the machine's Docker Engine, workspace bind-mounted (the default) and copied;
- podman: Debian's podman through its own CLI (`QUIRE_DOCKER=podman`), bind and copy;
- podman-tcp (`--remote`, root only): podman's API service in a mount namespace of its
  own where the scratch directory is hidden, reached by the docker CLI over tcp:// (an
  engine that cannot see this machine's files: copy is the only mode that works).

Per step, through quire's own wrappers (quire.tools.docker) in-process, medians:
version check, cached build, bind: `run --detach` then the mount check (`cp` of the
marker; timed on every engine, though a run makes it only on engines that do not
refuse an unseen bind source: not on Docker Engine, nor on a local podman); copy:
`create`, `tar | cp -` of the tree, `start`; one `exec true`; teardown
(`rm --force` + untag, together).
Whole run: `quire ci run --executor docker --quiet` of a pipeline with one job running
`true`, wall time, median. Measurements only: nothing is asserted.

podman needs higher default ulimits on some machines (`error setting rlimit type 7`):
the script writes a containers.conf into its scratch dir and points CONTAINERS_CONF at it.

Run:  .venv/bin/python bench/engine_costs.py [--reps 5] [--no-remote] [--files 0]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import _common as c

CONTAINERS_CONF = '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
PIPELINE = """\
from quire.ci import job

@job(inputs=["quire/push"])
def noop(rt):
    rt.sh(["true"], check=True)
"""
STEPS = (
    "version",
    "build (cached)",
    "create | run",
    "copy in | mount check",
    "start",
    "exec true",
    "teardown",
)


@dataclass
class Engine:
    name: str
    binary: str
    env: dict[str, str]
    modes: tuple[str, ...]
    base: str = ""
    results: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, **self.env}
        return c.run([shutil.which(self.binary) or self.binary, *args], env=env)

    def record(self, mode: str, step: str, seconds: float) -> None:
        self.results.setdefault(mode, {}).setdefault(step, []).append(seconds)


@contextmanager
def engine_env(engine: Engine) -> Iterator[None]:
    """QUIRE_DOCKER and the engine's variables, for os.environ and plumbum's copy of it."""
    from plumbum import local

    values = {"QUIRE_DOCKER": engine.binary, **engine.env}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    with local.env(**values):
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def build_base(engine: Engine, sc: c.Scratch) -> None:
    context = sc.root / f"base-{engine.name}"
    context.mkdir()
    shutil.copy(c.BUSYBOX, context / "busybox")
    (context / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    )
    engine.base = f"quire-bench-base-{sc.repo_name}"
    engine.cli("build", "-q", "-t", engine.base, str(context))


def steps_once(engine: Engine, mode: str, workspace: Path, repo: str) -> None:
    """One pass through the steps of a run, each timed, via quire.tools.docker."""
    from quire.tools import docker, process

    tag = f"{docker.image_repository(repo)}:bench-{secrets.token_hex(3)}"
    spec: docker.ContainerSpec = {
        "labels": {
            docker.RUN_ID_LABEL: f"bench-{secrets.token_hex(3)}",
            docker.REPO_LABEL: repo,
            docker.STORE_LABEL: os.environ["QUIRE_STATE_DIR"],
            docker.HOST_LABEL: socket.gethostname(),
        },
        "ceiling_s": 600,
        "limits": None,
    }
    engine.record(mode, "version", c.timed(docker.engine))
    dockerfile = workspace / ".quire" / "Dockerfile"
    engine.record(
        mode,
        "build (cached)",
        c.timed(lambda: docker.build(dockerfile, workspace, [tag], lambda s, b: None)),
    )
    started: list[str] = []
    if mode == "copy":
        engine.record(
            mode, "create | run", c.timed(lambda: started.append(docker.create(tag, **spec)))
        )
        engine.record(
            mode, "copy in | mount check", c.timed(lambda: docker.copy_in(started[0], workspace))
        )
        engine.record(mode, "start", c.timed(lambda: docker.start(started[0])))
    else:
        marker = workspace / f".quire-mount-check-{secrets.token_hex(8)}"
        marker.write_text("x")
        run = lambda: started.append(docker.run_detached(tag, mount_source=workspace, **spec))  # noqa: E731
        engine.record(mode, "create | run", c.timed(run))
        unseen: list[str | None] = []
        check = lambda: unseen.append(docker.why_unseen(started[0], marker.name))  # noqa: E731
        engine.record(mode, "copy in | mount check", c.timed(check))
        marker.unlink()
        if unseen[0] is not None:
            raise SystemExit(f"{engine.name}: the bind mount is not seen: {unseen[0]}")
    cid = started[0]
    exec_argv = docker.exec_argv(cid, ["true"])
    engine.record(mode, "exec true", c.timed(lambda: process.run(exec_argv)))
    engine.record(mode, "teardown", c.timed(lambda: docker.teardown(cid, tag)))


def whole_run(engine: Engine, mode: str, sc: c.Scratch) -> None:
    config = sc.root / f"config-{engine.name}-{mode}.toml"
    config.write_text(f'[docker]\nworkspace = "{mode}"\n')
    env = {
        **c.quire_env(sc),
        "QUIRE_DOCKER": engine.binary,
        **engine.env,
        "QUIRE_CONFIG": str(config),
    }
    argv = [c.QUIRE, "ci", "run", "--executor", "docker", "--quiet", "--repo", str(sc.repo)]
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"{engine.name}/{mode}: quire ci run exited {done.returncode}:\n"
            f"{done.stdout}{done.stderr}"
        )
    engine.record(mode, "whole run", elapsed)


def start_remote(
    sc: c.Scratch, podman_env: dict[str, str]
) -> tuple[Engine, subprocess.Popen[bytes]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = (
        f"mount -t tmpfs -o size=1m quire-bench-hidden {shlex.quote(str(sc.root))} && "
        f"exec podman system service --time=0 tcp://127.0.0.1:{port}"
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script],
        env={**os.environ, **podman_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    remote = Engine("podman-tcp", "docker", {"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}, ("copy",))
    for _ in range(150):
        if (
            subprocess.run(
                ["docker", "version"], env={**os.environ, **remote.env}, capture_output=True
            ).returncode
            == 0
        ):
            return remote, proc
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("podman system service never answered")


def cleanup(engine: Engine, sc: c.Scratch) -> None:
    from quire.tools.docker import short_image_name

    env = {**os.environ, **engine.env}
    binary = shutil.which(engine.binary) or engine.binary
    ids = subprocess.run(
        [binary, "ps", "-aq", "--filter", f"label=quire.store={sc.state}"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    for cid in ids:
        subprocess.run([binary, "rm", "--force", cid], capture_output=True, env=env)
    images = subprocess.run(
        [binary, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    ours = [
        name
        for name in images
        if sc.repo_name in short_image_name(name) and not name.endswith(":<none>")
    ]
    if ours:
        subprocess.run([binary, "image", "rm", "-f", *ours], capture_output=True, env=env)


def table(engines: list[Engine], reps: int) -> None:
    columns = [(e, mode) for e in engines for mode in e.modes]
    header = ["step", *(f"{e.name} {mode}" for e, mode in columns)]
    rows = []
    for step in (*STEPS, "whole run"):
        row = [step]
        for engine, mode in columns:
            times = engine.results.get(mode, {}).get(step)
            row.append("-" if not times else f"{c.median(times) * 1000:.0f} ms")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\nengines side by side, medians of {reps} reps")
    for line in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-remote", action="store_true", help="skip podman over tcp://")
    parser.add_argument("--files", type=int, default=0, help="extra files in the repository")
    args = parser.parse_args()
    # Outside the scratch dir: podman-tcp's mount namespace hides that one.
    with c.scratch("engines") as sc, tempfile.TemporaryDirectory() as outside:
        conf = Path(outside) / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        engines = []
        if c.docker_available():
            engines.append(Engine("docker", "docker", {}, ("bind", "copy")))
        if shutil.which("podman"):
            engines.append(
                Engine("podman", "podman", {"CONTAINERS_CONF": str(conf)}, ("bind", "copy"))
            )
        if not engines:
            print("neither docker nor podman is available; nothing measured", file=sys.stderr)
            return 2
        files = {f"src/f{n}.txt": f"{n}\n" for n in range(args.files)}
        service = None
        try:
            for engine in engines:
                build_base(engine, sc)
            podman = next((e for e in engines if e.name == "podman"), None)
            if podman and not args.no_remote and os.geteuid() == 0 and shutil.which("unshare"):
                remote, service = start_remote(sc, podman.env)
                remote.base = podman.base  # one storage
                engines.append(remote)
            sc.commit(
                {
                    ".quire/ci.py": PIPELINE,
                    ".quire/Dockerfile": c.dockerfile(engines[0].base),
                    **files,
                }
            )
            from quire.ci.run import workspace as workspaces
            from quire.ci.store.runs import store_for
            from quire.tools import git

            repo = store_for(sc.repo).repo
            head = git.resolve(sc.repo / ".git", "HEAD").sha
            for rep in range(args.reps + 1):  # the first is a warm-up
                order = [(e, m) for e in engines for m in e.modes]
                if rep % 2:
                    order.reverse()
                for engine, mode in order:
                    workspace = sc.root / "ws" / f"{engine.name}-{mode}-{rep}"
                    workspaces.materialize(sc.repo / ".git", head, workspace)
                    with engine_env(engine):
                        steps_once(engine, mode, workspace, repo)
                    shutil.rmtree(workspace.parent / workspace.name, ignore_errors=True)
                    whole_run(engine, mode, sc)
                if rep == 0:
                    for engine in engines:
                        engine.results.clear()
                print(f"rep {rep}/{args.reps} done", flush=True)
        finally:
            for engine in engines:
                cleanup(engine, sc)
            if service is not None:
                service.terminate()
                service.wait()
    table(engines, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
