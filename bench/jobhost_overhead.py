"""The job host's costs: a do-nothing run before and after it, and a host command's cost.

- do-nothing run: `quire ci run` (host executor) of a pipeline with one job that does
  nothing, at REV (default: the commit before the job host, 2bdf45a^, run from a git
  worktree of it) and now, cold (each run its own process), interleaved. Target: now
  at most 30 ms more than REV.
- per command on the host: (a run of N `rt.sh(["true"])` minus a run of none) / N,
  against an `sh` loop running `/bin/true` N times (fork and exec each, like quire).
  Target: <= 2x.

    .venv/bin/python bench/jobhost_overhead.py [--reps 9] [--commands 200] [--rev REV]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

NOTHING = """
from quire.ci import job

@job(inputs=["quire/push"])
def nothing(rt):
    pass
"""

COMMANDS = """
from quire.ci import job

@job(inputs=["quire/push"])
def steps(rt):
    for _ in range({n}):
        rt.sh(["true"])
"""


def commit(sc: c.Scratch, source: str) -> None:
    (sc.repo / ".quire").mkdir(exist_ok=True)
    (sc.repo / ".quire" / "ci.py").write_text(source)
    sc.git("add", "-A")
    sc.git("commit", "-q", "-m", "pipeline")


def quire_run(sc: c.Scratch, pythonpath: str | None = None) -> None:
    env = c.quire_env(sc)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    c.run([sys.executable, "-m", "quire", "ci", "run", "--quiet"], cwd=sc.repo, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--rev", default="2bdf45a^")
    args = parser.parse_args()

    old = Path(tempfile.mkdtemp(prefix="quire-bench-before-"))
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.rev], check=True)
    rows: list[c.Row] = []
    try:
        with c.scratch("jobhost") as sc:
            commit(sc, NOTHING)
            for _ in range(2):  # warm the page cache and both bytecode caches
                quire_run(sc)
                quire_run(sc, str(old))
            now, before = [], []
            for rep in range(args.reps):
                pair = [
                    ("now", lambda: quire_run(sc)),
                    ("before", lambda: quire_run(sc, str(old))),
                ]
                for name, action in pair if rep % 2 else reversed(pair):
                    (now if name == "now" else before).append(c.timed(action))
            extra = c.median(now) - c.median(before)
            rows.append(
                c.Row(
                    "do-nothing host run: now vs before",
                    c.median(now),
                    c.median(before),
                    None,
                    note=f"+{extra * 1000:.1f} ms (target <= +30 ms): "
                    + ("PASS" if extra <= 0.030 else "MISS"),
                )
            )

            def per_command(pythonpath: str | None) -> float:
                commit(sc, COMMANDS.format(n=args.commands))
                quire_run(sc, pythonpath)

                def once() -> None:
                    quire_run(sc, pythonpath)

                with_commands = [c.timed(once) for _ in range(args.reps)]
                commit(sc, COMMANDS.format(n=0))
                once()
                without = [c.timed(once) for _ in range(args.reps)]
                return (c.median(with_commands) - c.median(without)) / args.commands

            per_quire = per_command(None)
            per_before = per_command(str(old))
            loop = f"i=0; while [ $i -lt {args.commands} ]; do /bin/true; i=$((i+1)); done"
            raw = [c.timed(lambda: c.run(["sh", "-c", loop])) for _ in range(args.reps)]
            per_raw = c.median(raw) / args.commands
            rows.append(
                c.Row("per command on the host (rt.sh vs sh loop)", per_quire, per_raw, target=2.0)
            )
            rows.append(
                c.Row("per command on the host, before (vs sh loop)", per_before, per_raw, None)
            )
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], check=False)
    c.print_table(f"job host costs ({os.cpu_count()} cores, {args.reps} reps, medians)", rows)


if __name__ == "__main__":
    main()
