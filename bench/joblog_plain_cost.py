"""What writing each job's output.txt costs the run: 512 MiB of 64 KiB output chunks through
`JsonLogs` (the log.jsonl writer) in this process, with output.txt written and with its
writes turned off; medians of 3, interleaved. No target: the price of a download of a
finished job's output at the speed of a file (bench/web_big_log.py).

Run:  .venv/bin/python bench/joblog_plain_cost.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from quire.ci.events import JobStarted, Output
from quire.ci.store import logs
from quire.ci.store.eventlog import JsonLogs

LINE = b"build step 0042: compiling module quire.web.app -> ok \x1b[32m\xe2\x9c\x93\x1b[0m\n"
CHUNK = (LINE * (65536 // len(LINE) + 1))[:65536]
CHUNK = CHUNK[: CHUNK.rfind(b"\n") + 1]
COUNT = (512 * 1024 * 1024) // len(CHUNK)


def through_the_log(plain: bool) -> float:
    directory = Path(tempfile.mkdtemp(prefix="quire-bench-"))
    write = logs.PlainWriter.write
    if not plain:
        logs.PlainWriter.write = lambda self, data: None  # type: ignore[method-assign]
    try:
        writer = JsonLogs(lambda: directory)
        writer.handle(JobStarted("build"))
        start = time.perf_counter()
        for _ in range(COUNT):
            writer.handle(Output("build", "stdout", CHUNK))
        writer.close()
        return time.perf_counter() - start
    finally:
        logs.PlainWriter.write = write  # type: ignore[method-assign]
        shutil.rmtree(directory)


def main() -> None:
    without: list[float] = []
    with_plain: list[float] = []
    for _ in range(3):
        without.append(through_the_log(plain=False))
        with_plain.append(through_the_log(plain=True))
    off, on = sorted(without)[1], sorted(with_plain)[1]
    print(
        f"512 MiB through JsonLogs: {off:.3f} s without output.txt, "
        f"{on:.3f} s with it ({on / off:.2f}x)"
    )


if __name__ == "__main__":
    main()
