"""What quire's post-receive hook adds to a `git push`.

Measures: `git push` of one new commit to a local bare repository, with
quire's hook installed vs the same repository with the hook moved aside,
interleaved (alternating which goes first), no worker running (so the
queue grows and the hook finds no one to wake: its full path). The hook
does all its work before the push returns (queue insert with fsync, the
wake-up), so the difference of the medians is what a pusher waits for.

Target: added time <= 50 ms.

Run:  .venv/bin/python bench/push_hook_overhead.py [--reps 30]
"""

from __future__ import annotations

import argparse
import os

import _common as c
import worker_common as w

TARGET_S = 0.050


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    with c.scratch("hook") as sc:
        bare, work = w.make_bare(sc, sc.repo_name)
        hook = bare / "hooks" / "post-receive"
        aside = bare / "hooks" / "post-receive.off"
        with_hook: list[float] = []
        without: list[float] = []

        def timed_push(enabled: bool) -> float:
            if enabled != hook.exists():
                os.rename(aside, hook) if enabled else os.rename(hook, aside)
            w.new_commit(sc, work)
            return c.timed(lambda: w.push(sc, work))

        for enabled in (True, False, True, False):  # warm-up
            timed_push(enabled)
        for rep in range(args.reps):
            order = (True, False) if rep % 2 == 0 else (False, True)
            for enabled in order:
                (with_hook if enabled else without).append(timed_push(enabled))
        added = c.median(with_hook) - c.median(without)
        c.print_table(
            f"git push of one commit, with vs without quire's hook ({args.reps} reps, medians)",
            [
                c.Row("git push", c.median(with_hook), c.median(without), None),
                c.Row("added by the hook", added, None, TARGET_S, check="quire"),
            ],
        )


if __name__ == "__main__":
    main()
