"""Opening a job that printed 1 GiB: time to first byte, page-back, server memory.

Writes one job log.jsonl holding SIZE MiB of output (stdout events of
64 KiB, newline-dense, as quire writes them), starts `quire ci serve`
(its own process) and measures, medians of REPS fresh-connection GETs:

- the job page (its tail): time to first byte and to the end — the raw
  baseline is reading the same last 256 KiB of the file straight off disk
  (`open; seek; read`), in this process;
- the run page (each job's last 64 KiB);
- ten pages back (?before=) from the tail;
- the whole output as plain text (`output.txt`, SIZE MiB streamed): as a
  run writes it (the job's own output.txt beside its log), then for a log
  without one (older runs, runs mirrored from PostgreSQL): decoded once and
  cached, then again from the cache; against `cat log.jsonl > /dev/null`
  as the raw floor of reading the file;
- the server's peak RSS (VmHWM) over all of it — target <= 60 MiB.

Run:  .venv/bin/python bench/web_big_log.py [--size 1024] [--reps 11]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time

import _common as c
import web_common as w

TARGET_RSS = 60.0
TARGET_CAT_RATIO = 5.0  # output.txt of a finished job: at most 5x `cat` of its log
CHUNK = 64 * 1024


def write_log(path: c.Path, size_mib: int) -> int:
    line = b"build step 0042: compiling module quire.web.app -> ok \x1b[32m\xe2\x9c\x93\x1b[0m\n"
    chunk = (line * (CHUNK // len(line) + 1))[:CHUNK].decode("utf-8", "replace")
    event = w.line("stdout", data=chunk)
    raw = chunk.encode()
    count = size_mib * 1024 * 1024 // CHUNK
    # As quire writes a job: the log, and the same output bytes alone beside it.
    with open(path, "wb") as handle, open(path.parent / "output.txt", "wb") as plain:
        handle.write(w.line("sh-start", cmd="make everything"))
        for _ in range(count):
            handle.write(event)
            plain.write(raw)
        handle.write(w.line("sh-exit", exit=0, duration_s=12.5))
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024, help="MiB of output")
    parser.add_argument("--reps", type=int, default=11)
    args = parser.parse_args()
    with c.scratch("web-log") as sc:
        repo, run_id = w.fabricate_runs(sc, 1, repos=1)[0]
        state = "failed"  # fabricate_runs: run 0 is a failed one
        log = sc.state / "runs" / repo / state / run_id / "jobs" / "test" / "log.jsonl"
        size = write_log(log, args.size)
        subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=True)  # page cache
        job = f"/runs/{repo}/{run_id}/jobs/test"
        with w.served(sc, sc.root / "serve.log") as server:
            w.get(server, job)
            tails, runs, raws = [], [], []
            for _ in range(args.reps):
                tails.append(w.get(server, job))
                runs.append(w.get(server, f"/runs/{repo}/{run_id}"))
                raws.append(c.timed(lambda: read_tail(log)))
            back = page_back(server, job, 10)
            written = [w.download(server, job + "/output.txt") for _ in range(3)]
            whole = written[0]
            written_s = c.median([d.total for d in written])
            (log.parent / "output.txt").unlink()  # a log without it: decoded, cached
            t0 = time.perf_counter()
            w.download(server, job + "/output.txt")
            first_s = time.perf_counter() - t0
            cached = [w.download(server, job + "/output.txt").total for _ in range(3)]
            stream_s = c.median(cached)
            raw_cat = c.timed(lambda: subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL))
            rss = server.peak_rss_mib()
    raw = c.median(raws)
    mib = size / (1024 * 1024)
    rows = [
        c.Row("job page: first byte", c.median([t.first_byte for t in tails]), raw, None),
        c.Row(
            "job page: whole page",
            c.median([t.total for t in tails]),
            raw,
            None,
            note=f"({c.median([t.size for t in tails]) / 1024:.0f} KiB of HTML)",
        ),
        c.Row("run page (64 KiB tail per job)", c.median([t.total for t in runs]), raw, None),
        c.Row("one page back (median of 10)", c.median(back), raw, None),
        c.Row(
            f"output.txt, all {whole.size / 2**20:.0f} MiB",
            written_s,
            raw_cat,
            TARGET_CAT_RATIO,
            note="(median of 3, the run's own output.txt; raw: cat of the log file)",
        ),
        c.Row(
            "  without output.txt, first",
            first_s,
            raw_cat,
            None,
            note="(an older or mirrored run: decoded from the log, and cached)",
        ),
        c.Row(
            "  without output.txt, again",
            stream_s,
            raw_cat,
            None,
            note="(median of 3, from the cache)",
        ),
        c.Row("server peak RSS", rss, None, TARGET_RSS, unit="MiB", check="quire"),
    ]
    c.print_table(f"a job log of {mib:.0f} MiB (raw = read its last 256 KiB off disk)", rows)


def read_tail(path: c.Path) -> None:
    with open(path, "rb") as handle:
        handle.seek(-256 * 1024, 2)
        handle.read()


def page_back(server: w.Server, job: str, pages: int) -> list[float]:
    times = []
    conn_path = job
    for _ in range(pages):
        timing_start = time.perf_counter()
        body = fetch(server, conn_path)
        times.append(time.perf_counter() - timing_start)
        earlier = re.search(r'href="([^"]+\?before=\d+)"', body)
        if earlier is None:
            break
        conn_path = earlier.group(1)
    return times


def fetch(server: w.Server, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=60) as response:
        return str(response.read().decode())


if __name__ == "__main__":
    main()
