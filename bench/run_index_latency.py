"""Run index latency: a line printed by a job on a worker, to a reader's mirror on another
"machine" (its own state directory), through PostgreSQL.

A throwaway PostgreSQL server (tests/integration/postgres.py), a `quire ci worker --name
bench` with a database, and a push whose job prints LINES lines, one every GAP seconds.
This script reads, side by side, polling every 5 ms:

- raw: the line in the job's log.jsonl in the worker's own state directory (the floor any
  follower of the log starts at);
- index: the line in the reader's mirror of the run index, kept by a `Follower` (the
  thread `quire ci logs --follow` and `quire ci serve` run: LISTEN, sync at each NOTIFY).

Reports the medians and 95th percentiles of (seen - printed) for both, and their
difference (what the index adds). Target: the index adds <= 500 ms at the median (the
web page's live target; a publisher looks at its runs every 0.25 s).

Run:  .venv/bin/python bench/run_index_latency.py [--lines 40] [--gap 0.1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import _common as c
import worker_common as w

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration import postgres

JOB = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def lines(rt: Runtime):
    rt.sh("for i in $(seq {lines}); do echo \\"stamp $(date +%s.%N)\\"; sleep {gap}; done",
          check=True)
"""


def stamps(path: Path) -> dict[str, float]:
    """The stamps (print times) in `path` now, each with the time this script saw it."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    now = time.time()
    return {found: now for found in re.findall(r"stamp (\d+\.\d+)", text)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.1)
    args = parser.parse_args()

    from quire.ci.store.mirror import Mirror
    from quire.service.pgindex.reader import Follower
    from quire.service.pgschema import migrate

    server = postgres.start()
    try:
        url = server.new_database()
        migrate(url)
        with c.scratch("index") as sc:
            sc.env["QUIRE_DATABASE_URL"] = url
            os.environ["QUIRE_DATABASE_URL"] = url
            _bare, work = w.make_bare(sc, "idx")
            (work / ".quire" / "ci.py").write_text(JOB.format(lines=args.lines, gap=args.gap))
            c.run(["git", "commit", "-qam", "lines"], cwd=work, env=c.quire_env(sc))
            mirror = Mirror(sc.root / "reader" / "mirror")
            raw_seen: dict[str, float] = {}
            index_seen: dict[str, float] = {}
            with w.worker(sc, "--name", "bench"), Follower(url, mirror, poll_s=0.5):
                w.push(sc, work)
                deadline = time.monotonic() + 120 + args.lines * args.gap
                while len(index_seen) < args.lines and time.monotonic() < deadline:
                    for log in sc.state.glob("runs/*/*/*/jobs/lines/log.jsonl"):
                        for key, at in stamps(log).items():
                            raw_seen.setdefault(key, at)
                    for log in mirror.runs_root.glob("*/*/*/jobs/lines/log.jsonl"):
                        for key, at in stamps(log).items():
                            index_seen.setdefault(key, at)
                    time.sleep(0.005)
    finally:
        server.stop()

    def delays(seen: dict[str, float]) -> list[float]:
        return sorted(at - float(key) for key, at in seen.items())

    raw, index = delays(raw_seen), delays(index_seen)
    if len(index) < args.lines:
        raise SystemExit(f"only {len(index)} of {args.lines} lines reached the mirror")

    def p95(values: list[float]) -> float:
        return values[min(len(values) - 1, int(len(values) * 0.95))]

    added = statistics.median(index) - statistics.median(raw)
    for name, values in (("raw: the worker's log.jsonl", raw), ("index: a reader's mirror", index)):
        median, high = statistics.median(values) * 1000, p95(values) * 1000
        print(f"{name:32} median {median:6.0f} ms   p95 {high:6.0f} ms")
    verdict = "PASS" if added <= 0.5 else "MISS"
    print(f"the index adds {added * 1000:.0f} ms at the median (target <= 500 ms): {verdict}")


if __name__ == "__main__":
    main()
