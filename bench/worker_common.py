"""Shared scaffolding of the push/worker benchmarks (not a benchmark itself).

A bare repository with quire's hook installed through the CLI (as a user
does), a clone to push from, and a `quire ci worker` process started and
stopped by pid, all inside a `_common.scratch` (its own state dir).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import _common as c

PIPELINE = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def trivial(rt: Runtime):
    rt.sh(["true"], check=True)
"""


def make_bare(
    sc: c.Scratch, name: str, *, hook: bool = True, pipeline: str = PIPELINE
) -> tuple[Path, Path]:
    """An empty bare repo `<name>.git` (hook installed) and a clone with a pipeline."""
    bare = sc.root / f"{name}.git"
    work = sc.root / f"{name}-work"
    env = c.quire_env(sc)
    c.run(["git", "init", "-q", "--bare", str(bare)], env=env)
    c.run(["git", "clone", "-q", str(bare), str(work)], env=env)
    (work / ".quire").mkdir()
    (work / ".quire" / "ci.py").write_text(pipeline)
    c.run(["git", "add", "-A"], cwd=work, env=env)
    c.run(["git", "commit", "-q", "-m", "pipeline"], cwd=work, env=env)
    if hook:
        c.run([c.QUIRE, "ci", "hook", "install", "--repo", str(bare)], env=env)
    return bare, work


def new_commit(sc: c.Scratch, work: Path) -> None:
    c.run(["git", "commit", "-q", "--allow-empty", "-m", "bench"], cwd=work, env=c.quire_env(sc))


def push(sc: c.Scratch, work: Path, refspec: str = "HEAD:main") -> None:
    c.run(["git", "push", "-q", "origin", refspec], cwd=work, env=c.quire_env(sc))


@contextmanager
def worker(sc: c.Scratch, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `quire ci worker` (log in the scratch dir), stopped by pid at the end."""
    log = (sc.root / "worker.log").open("wb")
    proc = subprocess.Popen(
        [c.QUIRE, "ci", "worker", *args], stdout=log, stderr=subprocess.STDOUT, env=c.quire_env(sc)
    )
    try:
        deadline = time.monotonic() + 30
        while b"started" not in (sc.root / "worker.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((sc.root / "worker.log").read_text())
            time.sleep(0.01)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
