"""What quire's post-receive hook adds to a `git push`, with the SQLite queue and with
PostgreSQL.

Measures: `git push` of one new commit to a local bare repository with
quire's hook installed, queueing into the SQLite queue, and the same with
`QUIRE_DATABASE_URL` naming a PostgreSQL database (a server of the
benchmark's own on 127.0.0.1, trust authentication), against the same
repository with the hook moved aside; interleaved (the order rotates), no
worker running (so the queue grows, and without a database the hook finds
no one to wake: its full path). The hook does all its work before the
push returns (the insert, committed: fsync with SQLite; the wake-up or the
NOTIFY), so the difference of the medians is what a pusher waits for.
`--mode sqlite` skips PostgreSQL. `--before DIR` adds the hook of another
checkout's quire package (e.g. the previous version), run by the same
Python, on the same database, as one more interleaved mode (`--before-schema N`:
the PostgreSQL schema version that checkout knows, default 1). The hook counts
the live workers of the worker registry in its insert (none here: it warns,
its full path).

Target: added time <= 50 ms in either mode.

Run:  .venv/bin/python bench/push_hook_overhead.py [--reps 30] [--mode both|sqlite]
          [--before /path/to/other/checkout [--before-schema 2]]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource

import _common as c
import worker_common as w

TARGET_S = 0.050


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--mode", choices=("both", "sqlite"), default="both")
    parser.add_argument("--before", help="another checkout whose hook runs as a further mode")
    parser.add_argument(
        "--before-schema",
        type=int,
        default=1,
        help="the PostgreSQL schema version that checkout knows (its database is made to it)",
    )
    args = parser.parse_args()
    os.environ.pop("QUIRE_DATABASE_URL", None)
    modes = ["off", "sqlite"] + (["postgres"] if args.mode == "both" else [])
    if args.before:
        modes += ["sqlite, before"] + (["postgres, before"] if args.mode == "both" else [])
    with contextlib.ExitStack() as stack:
        sc = stack.enter_context(c.scratch("hook"))
        url = url_before = None
        if "postgres" in modes:
            import pg_common as pg

            server = stack.enter_context(pg.server())
            url = pg.database(server)
            # What the version before knows.
            url_before = pg.database(server, version=args.before_schema)
        bare, work = w.make_bare(sc, sc.repo_name)
        hook = bare / "hooks" / "post-receive"
        aside = bare / "hooks" / "post-receive.off"
        ours = hook.read_text()
        # The version before gets a queue of its own: it refuses a newer queue's schema.
        before = ours.replace(str(c.ROOT), args.before or str(c.ROOT)).replace(
            str(sc.state), str(sc.root / "state-before")
        )
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu: dict[str, list[float]] = {mode: [] for mode in modes}

        def timed_push(mode: str) -> float:
            enabled = mode != "off"
            if enabled != hook.exists():
                os.rename(aside, hook) if enabled else os.rename(hook, aside)
            if enabled:
                text = before if mode.endswith("before") else ours
                if hook.read_text() != text:
                    hook.write_text(text)
            w.new_commit(sc, work)
            if mode.startswith("postgres") and url and url_before:
                os.environ["QUIRE_DATABASE_URL"] = url_before if "before" in mode else url
            try:
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                took = c.timed(lambda: w.push(sc, work))
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[mode].append(after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime)
                return took
            finally:
                os.environ.pop("QUIRE_DATABASE_URL", None)

        for mode in modes * 2:  # warm-up
            timed_push(mode)
        for spent in cpu.values():
            spent.clear()
        for rep in range(args.reps):
            shift = rep % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                times[mode].append(timed_push(mode))
        without = c.median(times["off"])
        rows = []
        for mode in modes[1:]:
            rows += [
                c.Row(f"git push, {mode}", c.median(times[mode]), without, None),
                c.Row(
                    f"added by the hook, {mode}",
                    c.median(times[mode]) - without,
                    None,
                    TARGET_S,
                    check="quire",
                ),
            ]
        c.print_table(
            f"git push of one commit, with vs without quire's hook ({args.reps} reps, medians)",
            rows,
        )
        # CPU time (user + system of git and the hook it runs) hardly moves with the load of
        # a shared machine, where the clock does.
        base = c.median(cpu["off"])
        c.print_table(
            "CPU time of the push (user + system, medians)",
            [
                c.Row(f"added by the hook, {mode}", c.median(cpu[mode]) - base, None, None)
                for mode in modes[1:]
            ],
        )


if __name__ == "__main__":
    main()
