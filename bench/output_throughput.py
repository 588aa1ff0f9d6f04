"""Output throughput and memory: 1 GiB from one command through `rt.sh`.

Measures, interleaved over several repetitions:

- host mode: `quire ci run --quiet` (subprocess) of a pipeline whose one job
  runs `yes '<64-byte line>' | head -c SIZE` (a line-oriented generator)
  vs the same command redirected to a file by `sh -c '... > file'`.
  quire streams every chunk into the job's log.jsonl (JSON-encoded), keeps
  the last 4 MiB for ShOutput and drops the terminal output (--quiet).
- docker mode: `quire ci run --executor docker --quiet` of the same pipeline
  vs `docker exec <id> sh -c '...' > file` against a container of the same
  image started by the benchmark.

Rows: the command's own time as quire records it (`sh-exit` duration_s in
the job log) and the whole `quire ci run` wall time, each against the raw
redirect (target ratio <= 2.0), and quire's peak RSS, polled with psutil
every 10 ms on the quire process (target <= 100 MiB; the brief: flat under
60 MiB). The run record (with its SIZE-sized log) is deleted after each rep.

Run:  .venv/bin/python bench/output_throughput.py [--size 1024] [--reps 5] [--mode both]
      (--size in MiB; e.g. --size 200 for a quick look)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time

import _common as c
import psutil

TARGET_RATIO = 2.0
TARGET_RSS = 100.0
BRIEF_RSS = 60.0
LINE = "quire throughput bench: the quick brown fox jumps over the dog 01"  # 64 + newline


def generator(size: int) -> str:
    return f"yes '{LINE}' | head -c {size}"


def watch_rss(proc: subprocess.Popen[bytes]) -> tuple[float, list[int]]:
    """Wait for `proc`; returns (wall seconds, RSS samples of that one process)."""
    samples: list[int] = []
    handle = psutil.Process(proc.pid)
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                samples.append(handle.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    t0 = time.perf_counter()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"quire ci run exited {proc.returncode}:\n{out.decode()}{err.decode()}")
    return elapsed, samples


def quire_once(sc: c.Scratch, executor: str) -> tuple[float, float, float]:
    """One `quire ci run`: (wall s, sh-exit duration_s, peak RSS MiB)."""
    argv = [c.QUIRE, "ci", "run", "--quiet", "--executor", executor, "--repo", str(sc.repo)]
    proc = subprocess.Popen(
        argv,
        env=c.quire_env(sc),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wall, samples = watch_rss(proc)
    runs = next((sc.state / "runs").glob(f"{sc.repo_name}-*"))  # <folder>-<hash>
    run_dir = (runs / "latest").resolve()
    duration = None
    with open(run_dir / "jobs" / "bench" / "log.jsonl", "rb") as log:
        for line in log:
            if line.startswith(b'{"t"') and b'"sh-exit"' in line[:80]:
                duration = json.loads(line)["duration_s"]
    shutil.rmtree(run_dir)  # the log is SIZE bytes and more
    if duration is None:
        raise SystemExit("no sh-exit event in the job log")
    return wall, duration, max(samples) / 2**20


def raw_host(sc: c.Scratch, size: int) -> float:
    target = sc.root / "raw-out"
    elapsed = c.timed(lambda: c.run(["sh", "-c", f"{generator(size)} > {target}"]))
    target.unlink()
    return elapsed


def raw_docker(sc: c.Scratch, cid: str, size: int) -> float:
    target = sc.root / "raw-out"
    script = f'docker exec {cid} sh -c "{generator(size)}" > {target}'
    elapsed = c.timed(lambda: c.run(["sh", "-c", script]))
    target.unlink()
    return elapsed


def measure(
    sc: c.Scratch, mode: str, size: int, reps: int, cid: str | None
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"wall": [], "sh": [], "rss": [], "raw": []}

    def quire_step() -> None:
        wall, sh, rss = quire_once(sc, mode)
        results["wall"].append(wall)
        results["sh"].append(sh)
        results["rss"].append(rss)

    def raw_step() -> None:
        if mode == "host":
            results["raw"].append(raw_host(sc, size))
        else:
            assert cid is not None
            results["raw"].append(raw_docker(sc, cid, size))

    quire_step()  # warm-up (docker: builds the image)
    raw_step()
    for key in results:
        results[key].clear()
    for rep in range(reps):
        steps = [quire_step, raw_step]
        if rep % 2:
            steps.reverse()
        for step in steps:
            step()
        print(
            f"{mode} rep {rep + 1}/{reps}: quire wall {results['wall'][-1]:.2f}s  "
            f"sh {results['sh'][-1]:.2f}s  rss {results['rss'][-1]:.1f} MiB  "
            f"raw {results['raw'][-1]:.2f}s",
            flush=True,
        )
    return results


def rows(mode: str, size_mib: int, r: dict[str, list[float]]) -> list[c.Row]:
    raw = c.median(r["raw"])
    rss = max(r["rss"])
    return [
        c.Row(f"{mode}: {size_mib} MiB, rt.sh time", c.median(r["sh"]), raw, TARGET_RATIO),
        c.Row(f"{mode}: {size_mib} MiB, quire ci run wall", c.median(r["wall"]), raw, TARGET_RATIO),
        c.Row(f"{mode}: quire peak RSS (max)", rss, None, TARGET_RSS, unit="MiB", check="quire"),
        c.Row(f"{mode}: same, the brief's 60 MiB", rss, None, BRIEF_RSS, unit="MiB", check="quire"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB of output (default 1024)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mode", choices=["host", "docker", "both"], default="both")
    args = parser.parse_args()
    size = args.size * 2**20
    modes = ["host", "docker"] if args.mode == "both" else [args.mode]
    if "docker" in modes and not c.docker_available():
        print("docker is not available: host mode only", file=sys.stderr)
        modes.remove("docker")
    table: list[c.Row] = []
    with c.scratch("output", docker="docker" in modes) as sc:
        files = {
            ".quire/ci.py": f"""\
                from quire.ci import job

                @job(inputs=["quire/push"])
                def bench(rt):
                    rt.sh({generator(size)!r}, check=True)
                """,
        }
        if sc.base_image:
            files[".quire/Dockerfile"] = c.dockerfile(sc.base_image)
        sc.commit(files)
        for mode in modes:
            cid = None
            if mode == "docker":
                assert sc.base_image is not None
                cid = (
                    c.run(
                        [
                            "docker",
                            "run",
                            "--detach",
                            "--rm",
                            "--label",
                            f"quire-bench={sc.repo_name}",
                            sc.base_image,
                            "sleep",
                            "3600",
                        ]
                    )
                    .stdout.decode()
                    .strip()
                )
            results = measure(sc, mode, size, args.reps, cid)
            if cid:
                subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
            table += rows(mode, args.size, results)
    c.print_table(
        f"output throughput: {args.size} MiB of `yes` lines, median of {args.reps} reps",
        table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
