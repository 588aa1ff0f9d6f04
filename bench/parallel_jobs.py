"""Jobs side by side: three independent jobs that each sleep 1 s, `--jobs 3` vs `--jobs 1`.

Target (host mode, in one run): `--jobs 3` finishes in <= 1.2 s, against ~3 s one at a time.
The raw column is the same three `sleep 1` run by the shell in the background and waited for.

    .venv/bin/python bench/parallel_jobs.py [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, median, print_table, quire_env, scratch, timed

PIPELINE = """
from quire.ci import job

@job(inputs=["quire/push"])
def one(rt):
    rt.sh(["sleep", "1"])

@job(inputs=["quire/push"])
def two(rt):
    rt.sh(["sleep", "1"])

@job(inputs=["quire/push"])
def three(rt):
    rt.sh(["sleep", "1"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with scratch("parallel") as sc:
        sc.commit({".quire/ci.py": PIPELINE})
        quire = [sys.executable, "-m", "quire", "ci", "run", "--quiet", "--repo", str(sc.repo)]
        env = quire_env(sc)

        recorded: dict[str, list[float]] = {"1": [], "3": []}

        def run(jobs: str) -> None:
            done = subprocess.run(
                [*quire, "--jobs", jobs, "--json"], env=env, check=True, capture_output=True
            )
            recorded[jobs].append(json.loads(done.stdout)["duration_s"])

        def raw() -> None:
            subprocess.run(["sh", "-c", "sleep 1 & sleep 1 & sleep 1 & wait"], check=True)

        run("3")  # warm up
        three, one, shell = [], [], []
        for rep in range(args.reps):
            three.append(timed(lambda: run("3")))
            one.append(timed(lambda: run("1")))
            shell.append(timed(raw))
            print(f"rep {rep + 1}/{args.reps}: --jobs 3 {three[-1]:.2f}s  --jobs 1 {one[-1]:.2f}s")
    print_table(
        f"three jobs sleeping 1 s each, median of {args.reps}",
        [
            Row("--jobs 3, whole process", median(three), None, None, check="quire"),
            Row("--jobs 3, the run (as recorded)", median(recorded["3"]), None, 1.2, check="quire"),
            Row("--jobs 3 vs three background sleeps", median(three), median(shell), None),
            Row(
                "--jobs 1, the run (as recorded)", median(recorded["1"]), None, None, check="quire"
            ),
            Row("--jobs 3 vs --jobs 1, whole process", median(three), median(one), None),
        ],
    )


if __name__ == "__main__":
    main()
