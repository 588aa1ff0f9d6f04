"""Whole-run overhead of `quire ci run` for a one-job pipeline (the job runs `true`).

Measures, interleaved over several repetitions with the image already cached:

- `quire ci run --executor docker` (a subprocess, .venv/bin/quire) vs the
  raw sequence it wraps, as one shell script: `git archive | tar -x`,
  `docker build` (cached), `docker run -d ... sleep`, `docker exec true`,
  `docker rm -f`. Targets: ratio <= 1.5 (the brief), and 1.3 (ours).
- `quire ci run` in host mode (wall time; target <= 0.25 s), next to the
  raw `git archive | tar -x; true`; and the same on a pseudo-terminal, as a
  person sees it (the live area's renderer, rich, is imported only there).
- `quire --help` (target <= 0.15 s), next to a bare `python -c pass`.
- The floor under every run: a `python` that only imports the libraries a
  run cannot do without (pydantic's models, typer, PyYAML, plumbum) and
  ends as quire does, without the interpreter's teardown; and a host run's
  time above that floor (what quire itself spends).

Each quire row is measured twice: in a process of its own (QUIRE_NO_WARM=1)
and through a warm quire (`quire ci warm` for the scratch state directory,
started before and stopped after), which starts above none of that floor.

Run:  .venv/bin/python bench/docker_run_overhead.py [--reps 7]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import _common as c

TARGET_RATIO = 1.3
BRIEF_RATIO = 1.5
TARGET_DOCKER_ABS = 0.6
TARGET_HOST_ABS = 0.25
TARGET_HELP_ABS = 0.15
# What a run imports whatever quire does: records (pydantic), CLI, YAML, processes; it
# ends as quire does, without the interpreter's teardown (quire/cli/finish.py).
FLOOR_IMPORTS = "import pydantic.main, typer, yaml, plumbum, os; os._exit(0)"

RAW_DOCKER = """\
set -e
ws=$(mktemp -d "$ROOT/raw-ws.XXXXXX")
git --git-dir "$REPO/.git" archive HEAD | tar -x -C "$ws"
docker build --file "$ws/.quire/Dockerfile" --tag "$TAG" "$ws" >/dev/null
cid=$(docker run --detach --rm --label "quire-bench=$NAME" \\
      --mount "type=bind,src=$ws,dst=/work" --workdir /work "$TAG" sleep 3600)
docker exec --interactive --workdir /work "$cid" true </dev/null
docker rm --force "$cid" >/dev/null
rm -rf "$ws"
"""

RAW_HOST = """\
set -e
ws=$(mktemp -d "$ROOT/raw-ws.XXXXXX")
git --git-dir "$REPO/.git" archive HEAD | tar -x -C "$ws"
(cd "$ws" && true)
rm -rf "$ws"
"""


@contextlib.contextmanager
def warm_quire(env: dict[str, str], root: Path) -> Iterator[None]:
    """`quire ci warm` for the scratch state directory, until the block ends (SIGTERM)."""
    log_path = root / "warm.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [c.QUIRE, "ci", "warm"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root
        )
    try:
        deadline = time.monotonic() + 30
        while b"serving commands" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"quire ci warm did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    served = log_path.read_text().count(" runs ")
    print(f"the warm quire served {served} commands", flush=True)


def timed_subprocess(argv: list[str], env: dict[str, str]) -> float:
    def go() -> None:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(
                f"{' '.join(argv)} exited {done.returncode}:\n"
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )

    return c.timed(go)


def timed_on_terminal(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of `argv` with stdout and stderr on a pseudo-terminal (read to the end)."""

    def go() -> None:
        master, slave = os.openpty()
        try:
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
            )
        finally:
            os.close(slave)
        try:
            while True:
                try:
                    if not os.read(master, 65536):
                        break
                except OSError:  # EIO: the last writer has gone
                    break
        finally:
            os.close(master)
        if proc.wait() != 0:
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode} on a terminal")

    return c.timed(go)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if not c.docker_available():
        print("docker is not available; nothing measured", file=sys.stderr)
        return 2
    with c.scratch("run", docker=True) as sc:
        assert sc.base_image is not None
        sc.commit(
            {
                ".quire/ci.py": """\
                    from quire.ci import job

                    @job(inputs=["quire/push"])
                    def bench(rt):
                        rt.sh(["true"], check=True)
                    """,
                ".quire/Dockerfile": c.dockerfile(sc.base_image),
            }
        )
        env = c.quire_env(sc)
        raw_env = {
            **env,
            "ROOT": str(sc.root),
            "REPO": str(sc.repo),
            "NAME": sc.repo_name,
            "TAG": f"{sc.image_repository}:raw",
        }
        repo = str(sc.repo)
        cold = {**raw_env, "QUIRE_NO_WARM": "1"}
        measures: dict[str, tuple[list[str], dict[str, str]]] = {
            "docker quire": ([c.QUIRE, "ci", "run", "--executor", "docker", "--repo", repo], cold),
            "docker quire warm": (
                [c.QUIRE, "ci", "run", "--executor", "docker", "--repo", repo],
                raw_env,
            ),
            "docker raw": (["sh", "-c", RAW_DOCKER], raw_env),
            "host quire": ([c.QUIRE, "ci", "run", "--repo", repo], cold),
            "host quire warm": ([c.QUIRE, "ci", "run", "--repo", repo], raw_env),
            "host raw": (["sh", "-c", RAW_HOST], raw_env),
            "help quire": ([c.QUIRE, "--help"], cold),
            "help quire warm": ([c.QUIRE, "--help"], raw_env),
            "help raw": ([sys.executable, "-c", "pass"], raw_env),
            "floor": ([sys.executable, "-c", FLOOR_IMPORTS], raw_env),
        }
        on_terminal = {"host quire on a terminal", "host quire warm on a terminal"}
        measures["host quire on a terminal"] = measures["host quire"]
        measures["host quire warm on a terminal"] = measures["host quire warm"]
        with warm_quire(raw_env, sc.root):
            for name, (argv, env) in measures.items():  # warm-up: image, page cache
                if name not in on_terminal:
                    timed_subprocess(argv, env)
            times: dict[str, list[float]] = {name: [] for name in measures}
            for rep in range(args.reps):
                order = list(measures.items())
                if rep % 2:
                    order.reverse()
                for name, (argv, env) in order:
                    timer = timed_on_terminal if name in on_terminal else timed_subprocess
                    times[name].append(timer(argv, env))
                print(
                    f"rep {rep + 1}/{args.reps}: "
                    + "  ".join(f"{name} {values[-1]:.3f}s" for name, values in times.items()),
                    flush=True,
                )
    m = {name: c.median(values) for name, values in times.items()}
    c.print_table(
        f"whole-run overhead, one job running `true`, median of {args.reps} interleaved reps",
        [
            c.Row("docker: quire ci run vs raw script", m["docker quire"], m["docker raw"], 1.3),
            c.Row("docker: same, the brief's 1.5x", m["docker quire"], m["docker raw"], 1.5),
            c.Row(
                "docker: warm quire ci run vs raw script",
                m["docker quire warm"],
                m["docker raw"],
                BRIEF_RATIO,
            ),
            c.Row(
                "docker: quire ci run (absolute)",
                m["docker quire"],
                m["docker raw"],
                TARGET_DOCKER_ABS,
                check="quire",
            ),
            c.Row(
                "host: quire ci run (absolute)",
                m["host quire"],
                m["host raw"],
                TARGET_HOST_ABS,
                check="quire",
            ),
            c.Row(
                "host: warm quire ci run (absolute)",
                m["host quire warm"],
                m["host raw"],
                TARGET_HOST_ABS,
                check="quire",
            ),
            c.Row(
                "host: the same on a terminal (absolute)",
                m["host quire on a terminal"],
                m["host raw"],
                TARGET_HOST_ABS,
                check="quire",
            ),
            c.Row(
                "host: warm, on a terminal (absolute)",
                m["host quire warm on a terminal"],
                m["host raw"],
                TARGET_HOST_ABS,
                check="quire",
            ),
            c.Row(
                "quire --help vs python -c pass",
                m["help quire"],
                m["help raw"],
                TARGET_HELP_ABS,
                check="quire",
            ),
            c.Row(
                "warm quire --help vs python -c pass",
                m["help quire warm"],
                m["help raw"],
                TARGET_HELP_ABS,
                check="quire",
            ),
            c.Row("floor: python importing the libraries", m["floor"], m["help raw"], None),
            c.Row(
                "host run above the floor (quire's own)",
                m["host quire"] - m["floor"],
                m["floor"],
                None,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
