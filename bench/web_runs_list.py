"""The runs page over 1,000 runs: `quire ci serve` with its SQLite index vs scanning the store.

Fabricates RUNS finished runs (4 repositories, 2 jobs each) in a scratch
state dir, starts `quire ci serve` (a separate process, as a user runs it)
and times, medians of REPS fresh-connection GETs:

- `/` (the first page: 50 rows of the index, rendered) — target <= 150 ms;
- `/api/runs` (the same page as JSON);
- `/?repo=<one>&state=failed&page=2` (a filtered, later page);
- `/static/style.css` from the same server: the raw HTTP floor;
- in-process `list_runs` of all runs of every repository (what `quire ci
  runs --json` does: read every run's records): the cost per request
  without an index, the raw baseline of the list;
- the server's start (first sync of the index from nothing) and a restart
  (index on disk, nothing new), as wall time to the printed URL.

Run:  .venv/bin/python bench/web_runs_list.py [--runs 1000] [--reps 21]
"""

from __future__ import annotations

import argparse
import time

import _common as c
import web_common as w

TARGET_LIST_S = 0.150


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=21)
    args = parser.parse_args()
    with c.scratch("web-list") as sc:
        made = w.fabricate_runs(sc, args.runs)
        repo = made[0][0]
        first_start = time.perf_counter()
        with w.served(sc, sc.root / "serve.log") as server:
            cold = time.perf_counter() - first_start
            w.get(server, "/")  # warm-up: templates compiled, first sync
            pages = {"/": [], "/api/runs": [], f"/?repo={repo}&state=failed&page=2": []}
            static: list[float] = []
            for _ in range(args.reps):
                for path, times in pages.items():
                    timing = w.get(server, path)
                    assert timing.status == 200, (path, timing.status)
                    times.append(timing.total)
                static.append(w.get(server, "/static/style.css").total)
            rss = server.peak_rss_mib()
        restart_start = time.perf_counter()
        with w.served(sc, sc.root / "serve2.log"):
            warm_start = time.perf_counter() - restart_start
        scan = [c.timed(lambda: scan_all(sc)) for _ in range(max(3, args.reps // 4))]
    raw = c.median(static)
    rows = [
        c.Row("GET / (50 of 1000 runs)", c.median(pages["/"]), raw, TARGET_LIST_S, check="quire"),
        c.Row("GET /api/runs (JSON)", c.median(pages["/api/runs"]), raw, None),
        c.Row(
            "GET filtered page 2", c.median(pages[f"/?repo={repo}&state=failed&page=2"]), raw, None
        ),
        c.Row(
            "no index: list_runs of every run",
            c.median(scan),
            None,
            None,
            note="(raw baseline: what each request would cost by scanning)",
        ),
        c.Row("serve start, index built from nothing", cold, None, None),
        c.Row("serve restart, index on disk", warm_start, None, None),
        c.Row("server peak RSS", rss, None, 60.0, unit="MiB", check="quire"),
    ]
    c.print_table(
        f"runs list over {args.runs} runs (raw = GET of a static file, same server)", rows
    )


def scan_all(sc: c.Scratch) -> None:
    from quire.ci.store.runs import RunStore
    from quire.ci.store.views import list_runs

    for repo_dir in sorted((sc.state / "runs").iterdir()):
        list_runs(RunStore(repo_dir.name, root=repo_dir), None)


if __name__ == "__main__":
    main()
