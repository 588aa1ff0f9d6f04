"""What a `cache()` saves: the same "install" job with and without a cache, side by side.

Containers here cannot reach a package index (no registry, and TLS is not
trusted inside them), so a real `pip install` cannot be measured. The
stand-in is deterministic: on a cache miss the job "installs" by writing
--files files of 4 KiB (one process per file, as an unpacker would) into
/root/.cache/deps and checksumming them; on a hit it only finds them there.

- cached: `.quire/ci.py` declares `cache("deps", "/root/.cache/deps")`: the
  first run misses, every later run hits (the volume is kept).
- uncached: the same job without the declaration: every run misses.

Each variant runs `quire ci run --executor docker --quiet` --reps times (after
one cold run each; runs interleaved). Reported: the job's duration
(jobs/install/state.yml) and the whole run's wall time, medians; target: the
cached job >= 3x faster than the uncached one. Everything made (containers,
images, the cache volume) carries the scratch repository's name or state dir
and is removed at the end.

Run:  .venv/bin/python bench/cache_effect.py [--reps 5] [--files 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import _common as c
import yaml

TARGET_SPEEDUP = 3.0

JOB = """
from quire.ci import job{imports}
{declaration}

@job(inputs=["quire/push"])
def install(rt):
    rt.sh(
        "mkdir -p /root/.cache/deps && cd /root/.cache/deps && "
        "if [ -e .installed ]; then echo hit; else "
        "i=0; while [ $i -lt {files} ]; do head -c 4096 /dev/urandom > pkg$i; i=$((i+1)); done; "
        "sha256sum pkg* > SUMS && touch .installed && echo miss; fi",
        check=True,
    )
    rt.sh("cd /root/.cache/deps && sha256sum -c -s SUMS", check=True)
"""


def pipeline(*, cached: bool, files: int) -> str:
    if cached:
        return JOB.format(
            imports=", cache",
            declaration='\ncache("deps", "/root/.cache/deps")\n',
            files=files,
        )
    return JOB.format(imports="", declaration="", files=files)


def quire_run(sc: c.Scratch) -> tuple[float, float, str]:
    """Wall time of one run, the job's duration, and whether it hit."""
    started = time.perf_counter()
    done = subprocess.run(
        [c.QUIRE, "ci", "run", "--executor", "docker", "--repo", str(sc.repo)],
        capture_output=True,
        text=True,
        env=c.quire_env(sc),
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"quire ci run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    states = list((sc.state / "runs").glob("*/*/*/jobs/install/state.yml"))
    newest = max(states, key=lambda p: p.parent.parent.parent.name)
    state = yaml.safe_load(newest.read_text())
    hit = "hit" if "\nhit\n" in f"\n{done.stdout}" else "miss"
    return wall, float(state["duration_s"]), hit


def remove_leftovers(sc: c.Scratch) -> None:
    """The cache volume, and the images under the store's repo id (`<name>-<hash>`)."""
    images = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    ours = [name for name in images if name.startswith(f"quire-ci/{sc.repo_name}-")]
    if ours:
        subprocess.run(["docker", "image", "rm", "--force", *ours], capture_output=True)
    listed = subprocess.run(
        ["docker", "volume", "ls", "--quiet", "--filter", f"label=quire.store={sc.state}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if listed:
        subprocess.run(["docker", "volume", "rm", "--force", *listed], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    if not c.docker_available():
        sys.exit("docker is not available")

    with c.scratch("cache-on", docker=True) as on, c.scratch("cache-off", docker=True) as off:
        try:
            for sc, cached in ((on, True), (off, False)):
                assert sc.base_image is not None
                sc.commit(
                    {
                        ".quire/ci.py": pipeline(cached=cached, files=args.files),
                        ".quire/Dockerfile": c.dockerfile(sc.base_image),
                    }
                )
            cold_on = quire_run(on)
            cold_off = quire_run(off)
            print(f"cold: cached {cold_on}, uncached {cold_off}")
            results: dict[str, list[tuple[float, float, str]]] = {"on": [], "off": []}
            for rep in range(args.reps):
                order = [("on", on), ("off", off)] if rep % 2 == 0 else [("off", off), ("on", on)]
                for key, sc in order:
                    results[key].append(quire_run(sc))
            hits = {key: sorted({r[2] for r in runs}) for key, runs in results.items()}
            print(f"second and later runs: cached {hits['on']}, uncached {hits['off']}")
            job_on = c.median([r[1] for r in results["on"]])
            job_off = c.median([r[1] for r in results["off"]])
            wall_on = c.median([r[0] for r in results["on"]])
            wall_off = c.median([r[0] for r in results["off"]])
            speedup = job_off / job_on
            c.print_table(
                f"install job, {args.files} files, medians of {args.reps} "
                "(quire = with cache, raw = the same job without)",
                [
                    c.Row("job duration (2nd+ run)", job_on, job_off, None),
                    c.Row("whole quire ci run (2nd+ run)", wall_on, wall_off, None),
                    c.Row("first run with the cache (cold)", cold_on[1], cold_off[1], None),
                ],
            )
            verdict = "PASS" if speedup >= TARGET_SPEEDUP else "MISS"
            print(
                f"\ncached job is {speedup:.1f}x faster on its second run "
                f"(target >= {TARGET_SPEEDUP:.0f}x): {verdict}; whole run "
                f"{wall_off / wall_on:.1f}x"
            )
        finally:
            remove_leftovers(on)
            remove_leftovers(off)


if __name__ == "__main__":
    main()
