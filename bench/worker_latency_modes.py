"""Push -> the run's first command, idle worker, the SQLite queue against PostgreSQL.

Two idle workers wait, one on the SQLite queue of the scratch state
directory (woken by the hook's datagram), one on a PostgreSQL database
of its own server (woken by the hook's NOTIFY), the latter with its own
state and cache directories and `--name` as if on another machine. Each
repetition pushes a new commit once per mode (the order alternates),
`QUIRE_DATABASE_URL` set for the PostgreSQL push only, and waits for the
run to finish. The clock runs from just before `git push` starts to the
moment the run's first command writes the time to a file (`date
+%s.%N`): hook, wake-up, claim, `quire ci run` start, the fetch into the
worker's mirror, loading ci.py, the workspace, the job host.

Target: PostgreSQL <= 1 s (the SQLite queue gave 0.18 s to the run's start).

Run:  .venv/bin/python bench/worker_latency_modes.py [--reps 10]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time

import _common as c
import pg_common as pg
import worker_common as w

TARGET_S = 1.0

PIPELINE = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def first(rt: Runtime):
    rt.sh(["sh", "-c", "date +%s.%N >> {marks}"], check=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    os.environ.pop("QUIRE_DATABASE_URL", None)
    with c.scratch("latmodes") as sc, pg.server() as server:
        marks = sc.root / "marks"
        marks.touch()
        _bare, work = w.make_bare(sc, sc.repo_name, pipeline=PIPELINE.format(marks=marks))
        url = pg.database(server)
        from quire.service.pgqueue import PgQueue

        def lines() -> list[str]:
            return marks.read_text().split()

        def idle(mode: str) -> bool:
            if mode == "postgres":
                with PgQueue(url) as queue:
                    return not queue.active()
            with sqlite3.connect(sc.state / "queue.sqlite3") as con:
                return (
                    con.execute("SELECT count(*) FROM queue WHERE state != 'done'").fetchone()[0]
                    == 0
                )

        def one_push(mode: str) -> float:
            w.new_commit(sc, work)
            before = len(lines())
            if mode == "postgres":
                os.environ["QUIRE_DATABASE_URL"] = url
            try:
                t0 = time.time()
                w.push(sc, work)
            finally:
                os.environ.pop("QUIRE_DATABASE_URL", None)
            deadline = time.monotonic() + 60
            while len(lines()) == before or not idle(mode):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: no first command within 60 s")
                time.sleep(0.01)
            return float(lines()[before]) - t0

        found: dict[str, list[float]] = {"sqlite": [], "postgres": []}
        with w.worker(sc), pg.machine_worker(sc, url, "pg-1"):
            for mode in ("sqlite", "postgres"):  # warm-up: page cache, mirrors
                one_push(mode)
            for rep in range(args.reps):
                order = ("sqlite", "postgres") if rep % 2 == 0 else ("postgres", "sqlite")
                for mode in order:
                    found[mode].append(one_push(mode))
        pgm, sqm = c.median(found["postgres"]), c.median(found["sqlite"])
        c.print_table(
            f"push -> first command, idle worker, host ({args.reps} pushes each, medians)",
            [
                c.Row("PostgreSQL vs SQLite queue", pgm, sqm, None),
                c.Row("PostgreSQL, absolute", pgm, None, TARGET_S, check="quire"),
                c.Row("PostgreSQL, worst", max(found["postgres"]), None, TARGET_S, check="quire"),
                c.Row("SQLite, worst", max(found["sqlite"]), None, None),
            ],
        )


if __name__ == "__main__":
    main()
