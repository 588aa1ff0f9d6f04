"""40 queued small runs drained by two workers on PostgreSQL, against one.

Two (or one) `quire ci worker` processes, each with its own state and cache
directories and `--name` (standing for separate machines; on this machine
they share its 2 cores), wait idle on one database. Then 40 runs (40
branches of one bare repository, each a commit whose pipeline runs one
`true`) are queued in one transaction, as the hook would (its NOTIFY wakes
the workers), and the clock runs until the last row is done. Every run
must be complete, once, with its record on the machine that ran it. The
trials alternate (1, 2, 2, 1, ... workers), each on a new database.

Target: two workers drain at >= 1.5x the rate of one.

Run:  .venv/bin/python bench/worker_drain_postgres.py [--runs 40] [--trials 2]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack

import _common as c
import pg_common as pg
import worker_common as w

TARGET = 1.5
_trials = iter(range(1_000_000))  # each trial's machines are new: no records of the last


def drain(sc: c.Scratch, url: str, bare: str, branches: list[str], workers: int) -> float:
    from quire.service.pgqueue import PgQueue
    from quire.service.queue import Push, utc_text

    trial = next(_trials)
    with ExitStack() as stack:
        states = [
            stack.enter_context(pg.machine_worker(sc, url, f"t{trial}-w{i}"))
            for i in range(workers)
        ]
        with PgQueue(url) as queue:
            t0 = time.perf_counter()
            now = utc_text()
            queue.enqueue([Push(bare, f"refs/heads/{b}", sha, now) for b, sha in branches])
            deadline = time.monotonic() + 900
            while [e for e in queue.active()]:
                if time.monotonic() > deadline:
                    raise SystemExit("not drained in 15 minutes")
                time.sleep(0.05)
            took = time.perf_counter() - t0
            done = queue.recent(10_000)
    outcomes = {e.outcome for e in done}
    per_worker: dict[str, int] = {}
    for entry in done:
        per_worker[entry.worker_host or "?"] = per_worker.get(entry.worker_host or "?", 0) + 1
    records = [
        run.name for state in states for run in state.glob("runs/*/complete/*") if run.is_dir()
    ]
    once = sorted(records) == sorted(e.run_id for e in done) and len(done) == len(branches)
    print(
        f"  {workers} worker(s): {len(done)} runs in {took:.2f} s"
        f" ({len(done) / took:.2f} runs/s), outcomes {sorted(map(str, outcomes))},"
        f" per worker {per_worker}, each run recorded once: {'yes' if once else 'NO'}"
    )
    if not once or outcomes != {"complete"}:
        raise SystemExit("a run was lost, doubled or failed: see the workers' logs in the scratch")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    with c.scratch("drain") as sc, pg.server() as server:
        bare, work = w.make_bare(sc, sc.repo_name, hook=False)
        branches = []
        for i in range(args.runs):
            w.new_commit(sc, work)
            sha = c.run(["git", "rev-parse", "HEAD"], cwd=work).stdout.decode().strip()
            branches.append((f"b{i}", sha))
        c.run(
            ["git", "push", "-q", "origin", *[f"{s}:refs/heads/{b}" for b, s in branches]],
            cwd=work,
            env=c.quire_env(sc),
        )
        git_dir = os.path.realpath(bare)
        drain(sc, pg.database(server), git_dir, branches[:4], 1)  # warm-up
        one: list[float] = []
        two: list[float] = []
        for trial in range(args.trials):
            order = (1, 2) if trial % 2 == 0 else (2, 1)
            for workers in order:
                took = drain(sc, pg.database(server), git_dir, branches, workers)
                (one if workers == 1 else two).append(took)
        rate_one = args.runs / c.median(one)
        rate_two = args.runs / c.median(two)
        print(
            f"\n{args.runs} runs drained, medians of {args.trials}:"
            f" one worker {c.median(one):.2f} s"
            f" ({rate_one:.2f} runs/s), two workers {c.median(two):.2f} s ({rate_two:.2f} runs/s)"
        )
        ratio = rate_two / rate_one
        print(
            f"  two against one: {ratio:.2f}x  target >= {TARGET}x  "
            f"{'PASS' if ratio >= TARGET else 'MISS'}"
        )


if __name__ == "__main__":
    main()
