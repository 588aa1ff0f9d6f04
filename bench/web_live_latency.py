"""Live latency: a line printed by a running job, to the DOM of an open run page.

A real `quire ci run` (host executor) of a job that prints LINES lines,
one every GAP seconds, each carrying the wall-clock time it was printed.
The run page is open in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) with a MutationObserver stamping each
line's arrival with the same wall clock. Side by side:

- quire: print -> the page's DOM (job log -> server poll -> SSE -> browser);
- raw: print -> the line in the job's log.jsonl, seen by this script
  polling the file every 5 ms (the floor any follower of the log starts at).

Target: <= 500 ms (the brief). Also reports the same with BROWSERS pages
watching at once.

Run:  .venv/bin/python bench/web_live_latency.py [--lines 40] [--gap 0.1] [--browsers 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import _common as c
import web_common as w

TARGET_S = 0.5

CI = """\
import sys
from quire.ci import job

EMIT = '''
import time
for i in range({lines}):
    print("LINE", i, repr(time.time()), flush=True)
    time.sleep({gap})
'''


@job(inputs=["quire/push"])
def emit(rt):
    rt.sh("while [ ! -f {go} ]; do sleep 0.02; done")
    rt.sh([sys.executable, "-c", EMIT])
"""

OBSERVE = """
window.__arrivals = {};
new MutationObserver(function () {
  var text = document.querySelector("pre.log") ? document.body.textContent : "";
  var re = /LINE (\\d+) /g, m;
  while ((m = re.exec(text)) !== null) {
    if (!(m[1] in window.__arrivals)) window.__arrivals[m[1]] = Date.now();
  }
}).observe(document.body, {childList: true, subtree: true, characterData: true});
"""


def driver():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def raw_follower(log: Path, seen: dict[int, float], stop: threading.Event) -> None:
    offset = 0
    while not stop.is_set():
        if log.exists():
            with open(log, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            cut = data.rfind(b"\n") + 1
            offset += cut
            now = time.time()
            for match in re.finditer(rb"LINE (\d+) ", data[:cut]):
                seen.setdefault(int(match.group(1)), now)
        time.sleep(0.005)


def measure(
    sc: c.Scratch, server: w.Server, lines: int, gap: float, browsers: int
) -> dict[str, Any]:
    go = sc.root / f"go-{browsers}"
    sc.commit({".quire/ci.py": CI.format(lines=lines, gap=gap, go=go)})
    proc = subprocess.Popen(
        [c.QUIRE, "ci", "run", "--quiet", "--repo", str(sc.repo)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=c.quire_env(sc),
    )
    # The store names the repository (a segment of its path), so look it up.
    deadline = time.monotonic() + 60
    while not (logs := list(sc.state.glob("runs/*/active/*/jobs/emit/log.jsonl"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the run did not start (exit {proc.poll()})")
        time.sleep(0.02)
    log = logs[0]
    run_id, repo = log.parents[2].name, log.parents[4].name
    drivers = [driver() for _ in range(browsers)]
    try:
        for d in drivers:
            d.get(f"{server.url}runs/{repo}/{run_id}")
            while "live" not in d.find_element("id", "live-status").text:
                time.sleep(0.02)
            d.execute_script(OBSERVE)
        raw_seen: dict[int, float] = {}
        stop = threading.Event()
        follower = threading.Thread(target=raw_follower, args=(log, raw_seen, stop), daemon=True)
        follower.start()
        go.touch()
        proc.wait(timeout=lines * gap + 60)
        time.sleep(1.0)
        stop.set()
        follower.join()
        printed: dict[int, float] = {}
        text = drivers[0].find_element("css selector", "pre.log").text
        for match in re.finditer(r"LINE (\d+) (\d+\.\d+)", text):
            printed[int(match.group(1))] = float(match.group(2))
        web = []
        for d in drivers:
            arrivals = d.execute_script("return window.__arrivals")
            web += [arrivals[str(i)] / 1000 - t for i, t in printed.items() if str(i) in arrivals]
        raw = [raw_seen[i] - t for i, t in printed.items() if i in raw_seen]
    finally:
        for d in drivers:
            d.quit()
    return {"web": web, "raw": raw, "lines": len(printed)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--browsers", type=int, default=3)
    args = parser.parse_args()
    with c.scratch("web-live") as sc, w.served(sc, sc.root / "serve.log") as server:
        one = measure(sc, server, args.lines, args.gap, 1)
        many = measure(sc, server, args.lines, args.gap, args.browsers)
    rows = []
    for label, result in (("1 browser", one), (f"{args.browsers} browsers", many)):
        web, raw = sorted(result["web"]), sorted(result["raw"])
        p95 = web[int(0.95 * (len(web) - 1))]
        rows += [
            c.Row(
                f"{label}: median print -> DOM",
                statistics.median(web),
                statistics.median(raw),
                TARGET_S,
                check="quire",
                note=f"({len(web)} line arrivals)",
            ),
            c.Row(
                f"{label}: p95 print -> DOM",
                p95,
                raw[int(0.95 * (len(raw) - 1))],
                TARGET_S,
                check="quire",
            ),
            c.Row(f"{label}: max print -> DOM", web[-1], raw[-1], TARGET_S, check="quire"),
        ]
    c.print_table("live latency (raw = the line in log.jsonl, polled every 5 ms)", rows)


if __name__ == "__main__":
    main()
