"""50 pushes to 5 repositories, `quire ci worker --concurrency 2`, host mode, trivial jobs.

Each push is a new commit on `main` of one of 5 bare repositories (round
robin), pushed as fast as git allows while the worker runs. Then it waits
for the queue to drain and checks: every push has exactly one run record
(one queue row per push, one record per row, no run id twice, all
complete). Prints the wall time from the first push to the last run
finished and the runs per second.

Target: all 50 recorded exactly once, none lost.

Run:  .venv/bin/python bench/worker_throughput.py [--pushes 50] [--repos 5] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import sqlite3
import time

import _common as c
import worker_common as w


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--repos", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with c.scratch("throughput") as sc:
        repos = [w.make_bare(sc, f"{sc.repo_name}-{i}") for i in range(args.repos)]
        db = sc.state / "queue.sqlite3"
        with w.worker(sc, "--concurrency", str(args.concurrency)):
            t0 = time.perf_counter()
            for i in range(args.pushes):
                _bare, work = repos[i % args.repos]
                w.new_commit(sc, work)
                w.push(sc, work)
            pushed = time.perf_counter() - t0
            deadline = time.monotonic() + 600
            while True:
                with sqlite3.connect(db) as con:
                    left = con.execute("SELECT count(*) FROM queue WHERE state != 'done'")
                    if left.fetchone()[0] == 0:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("the queue did not drain in 10 minutes")
                time.sleep(0.05)
            drained = time.perf_counter() - t0
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT run_id, outcome FROM queue").fetchall()
        records = [
            run.name
            for state in ("pending", "active", "complete", "failed")
            for run in (sc.state / "runs").glob(f"*/{state}/*")
            if run.is_dir() and not run.name.startswith(".")
        ]
        complete = [r for r in (sc.state / "runs").glob("*/complete/*") if r.is_dir()]
        exactly_once = sorted(records) == sorted(r[0] for r in rows) and len(set(records)) == len(
            records
        )
        print(
            f"\n{args.pushes} pushes to {args.repos} repositories, --concurrency {args.concurrency}"
        )
        print(
            f"  queue rows: {len(rows)}   run records: {len(records)}   complete: {len(complete)}"
        )
        verdict = "PASS" if exactly_once and len(rows) == args.pushes else "MISS"
        print(f"  every push recorded exactly once: {verdict}")
        print(f"  pushing took {pushed:.2f} s; first push -> queue drained {drained:.2f} s")
        print(f"  {args.pushes / drained:.2f} runs/s")


if __name__ == "__main__":
    main()
