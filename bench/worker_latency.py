"""Push -> run started, with an idle `quire ci worker` (host executor).

For each repetition: one new commit is pushed to a bare repository with
quire's hook; the clock runs from just before `git push` starts to the
run's `started_at` (times.yml, written by the child `quire ci run` as the
run goes active). Also shown from the moment `git push` returned. The
worker is idle between pushes (each run finishes before the next push).

Target: push -> run started <= 1 s.

Run:  .venv/bin/python bench/worker_latency.py [--reps 10]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

import _common as c
import worker_common as w
import yaml

TARGET_S = 1.0


def started_at(run_dir: object) -> float | None:
    try:
        times = yaml.safe_load((run_dir / "times.yml").read_text())  # type: ignore[operator]
    except OSError:
        return None
    value = times.get("started_at") if times else None
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when.timestamp()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    with c.scratch("latency") as sc:
        bare, work = w.make_bare(sc, sc.repo_name)
        from quire.paths import repo_id  # the store names a repository <folder>-<hash>

        complete = sc.state / "runs" / repo_id(bare.name, bare) / "complete"
        from_start: list[float] = []
        from_return: list[float] = []
        with w.worker(sc):
            for rep in range(args.reps + 1):  # the first one warms the page cache up
                w.new_commit(sc, work)
                before = set(complete.iterdir()) if complete.is_dir() else set()
                t0 = time.time()
                w.push(sc, work)
                t1 = time.time()
                deadline = time.monotonic() + 30
                while not complete.is_dir() or set(complete.iterdir()) == before:
                    if time.monotonic() > deadline:
                        raise SystemExit("no run finished within 30 s")
                    time.sleep(0.01)
                (new,) = set(complete.iterdir()) - before
                started = started_at(new)
                if rep and started is not None:
                    from_start.append(started - t0)
                    from_return.append(started - t1)
        c.print_table(
            f"push -> run started, idle worker, host ({args.reps} pushes, medians)",
            [
                c.Row("from `git push` start", c.median(from_start), None, TARGET_S, check="quire"),
                c.Row(
                    "from `git push` return", c.median(from_return), None, TARGET_S, check="quire"
                ),
                c.Row("worst, from push start", max(from_start), None, TARGET_S, check="quire"),
            ],
        )


if __name__ == "__main__":
    main()
