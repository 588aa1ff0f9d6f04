"""Per-command overhead of `rt.sh` in docker mode vs a raw `docker exec`.

Measures: 100 `true` commands through `Runtime.sh` with quire's
DockerExecutor (built in-process, the way `quire.ci.run.jobs` builds it: run
record, materialized workspace, image build, container start, job log)
against 100 raw `docker exec <id> true` subprocess calls, from Python,
against the SAME container. The two loops are interleaved (alternating
which goes first) over several repetitions; the table shows medians.

A third row runs the raw loop with exactly quire's argv
(`docker exec --interactive --workdir /work <id> true`) to split the
overhead into "what docker does with those flags" and "what quire's Python
adds" (plumbum lookup, logging, redaction, fsync-free JSON lines...).

Target: quire / raw <= 1.10 for the 100-command loop (and so each step
within ~5-10% of a raw `docker exec`).

Run:  .venv/bin/python bench/docker_exec_overhead.py [--commands 100] [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import _common as c

TARGET = 1.10


def raw_loop(argv: list[str], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True)
    return time.perf_counter() - t0


def quire_loop(rt: object, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        out = rt.sh(["true"])  # type: ignore[attr-defined]
        if out.exit != 0:
            raise SystemExit(f"rt.sh(['true']) exited {out.exit}: {out.stderr}")
    return time.perf_counter() - t0


def measure(
    sc: c.Scratch,
    sha: str,
    n: int,
    reps: int,
    quire_t: list[float],
    raw_t: list[float],
    same_t: list[float],
    durations: list[float],
) -> None:
    """Fill the lists up to `reps` entries, in one container (one quire run)."""
    with c.in_process_run(sc, sha, "docker") as run:
        cid = run.executor.container_id  # type: ignore[attr-defined]
        raw_argv = ["docker", "exec", cid, "true"]
        same_argv = ["docker", "exec", "--interactive", "--workdir", "/work", cid, "true"]
        # Warm-up: page cache, docker's exec path, plumbum's program lookup.
        quire_loop(run.runtime, 10)
        raw_loop(raw_argv, 10)
        raw_loop(same_argv, 10)
        while len(quire_t) < reps:
            rep = len(quire_t)
            results = {}
            order = [
                ("quire", lambda: quire_loop(run.runtime, n)),
                ("raw", lambda: raw_loop(raw_argv, n)),
                ("same", lambda: raw_loop(same_argv, n)),
            ]
            if rep % 2:
                order.reverse()
            for name, step in order:
                results[name] = step()
            quire_t.append(results["quire"])
            raw_t.append(results["raw"])
            same_t.append(results["same"])
            print(
                f"rep {rep + 1}/{reps}: quire {quire_t[-1]:.3f}s  raw {raw_t[-1]:.3f}s  "
                f"raw (quire's argv) {same_t[-1]:.3f}s",
                flush=True,
            )
        durations += [
            e["duration_s"]
            for e in map(json.loads, run.job_log.read_text().splitlines())
            if e["event"] == "sh-exit"
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if not c.docker_available():
        print("docker is not available; nothing measured", file=sys.stderr)
        return 2
    n = args.commands
    with c.scratch("exec", docker=True) as sc:
        assert sc.base_image is not None
        sha = sc.commit(
            {
                ".quire/ci.py": """\
                    from quire.ci import job

                    @job(inputs=["quire/push"])
                    def bench(rt):
                        rt.sh(["true"])
                    """,
                ".quire/Dockerfile": c.dockerfile(sc.base_image),
            }
        )
        quire_t: list[float] = []
        raw_t: list[float] = []
        same_t: list[float] = []
        durations: list[float] = []
        for _attempt in range(5):
            try:
                measure(sc, sha, n, args.reps, quire_t, raw_t, same_t, durations)
                break
            except c.CONTAINER_GONE as exc:
                print(f"container went away mid-measurement ({exc}); new container", flush=True)
        else:
            print("the container kept disappearing; giving up", file=sys.stderr)
            return 1
    q, r, s = c.median(quire_t), c.median(raw_t), c.median(same_t)
    # sh-exit duration_s: spawn to reap of the docker client, as quire measures it.
    sh_exit = c.median(durations)
    c.print_table(
        f"docker exec overhead: {n} x `true`, median of {args.reps} interleaved reps",
        [
            c.Row(f"{n} commands, rt.sh vs docker exec", q, r, TARGET),
            c.Row(f"{n} commands, rt.sh vs quire's argv", q, s, TARGET),
            c.Row("per command (loop / n)", q / n, r / n, TARGET),
            c.Row("per command, sh-exit duration_s", sh_exit, r / n, None, note="(info)"),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
