"""Teardown time of a docker run: quire's vs raw `docker stop` and `docker rm -f`.

Measures, per repetition, on containers of the same image (the one quire
builds from the scratch repository's `.quire/Dockerfile`, `sleep` as PID 1,
workspace bind-mounted, `--rm`):

- quire: `DockerExecutor.__exit__` of an executor entered in-process (stamp
  container_stopped_at in container.yml, `docker rm --force` and untag of
  the run's image tag, run at the same time, log events);
- raw `docker rm -f <id>`;
- raw `docker rm -f <id>` and `docker image rm --no-prune <tag>` started
  together (the same docker work quire does, without quire around it);
- raw `docker stop <id>` (sleep as PID 1 ignores SIGTERM, so this waits out
  the 10 s grace period: the cost quire avoids).

Targets: quire's teardown under 1 s (median) and within 2x of `docker rm -f`.

Run:  .venv/bin/python bench/docker_teardown.py [--reps 7] [--stop-reps 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import _common as c

TARGET_ABS = 1.0
TARGET_RATIO = 2.0


def start_raw(sc: c.Scratch, image: str, mount: str) -> str:
    done = c.run(
        [
            "docker",
            "run",
            "--detach",
            "--rm",
            "--label",
            f"quire-bench={sc.repo_name}",
            "--mount",
            f"type=bind,src={mount},dst=/work",
            "--workdir",
            "/work",
            image,
            "sleep",
            "3600",
        ]
    )
    return done.stdout.decode().strip()


def quire_teardown(sc: c.Scratch, sha: str) -> float:
    with c.docker_executor(sc, sha) as ex:
        ex.__enter__()  # type: ignore[attr-defined]
        cid = ex.container_id  # type: ignore[attr-defined]
        tag = ex.image_tag  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        ex.__exit__(None, None, None)  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - t0
    gone = subprocess.run(["docker", "inspect", cid], capture_output=True).returncode != 0
    untagged = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
    if not gone or untagged.returncode == 0:
        raise SystemExit(f"quire's teardown left container {cid[:12]} or tag {tag} behind")
    return elapsed


def raw_rm(sc: c.Scratch, image: str, mount: str) -> float:
    cid = start_raw(sc, image, mount)
    return c.timed(lambda: c.run(["docker", "rm", "-f", cid]))


def raw_rm_untag(sc: c.Scratch, image: str, mount: str, n: int) -> float:
    tag = f"{sc.image_repository}:raw-{n}"
    c.run(["docker", "tag", image, tag])
    cid = start_raw(sc, tag, mount)

    def both() -> None:
        procs = [
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for argv in (
                ["docker", "rm", "--force", cid],
                ["docker", "image", "rm", "--no-prune", tag],
            )
        ]
        for proc in procs:
            proc.wait()

    return c.timed(both)


def raw_stop(sc: c.Scratch, image: str, mount: str) -> float:
    cid = start_raw(sc, image, mount)
    elapsed = c.timed(lambda: c.run(["docker", "stop", cid]))
    subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--stop-reps", type=int, default=3, help="each takes ~10 s")
    args = parser.parse_args()
    if not c.docker_available():
        print("docker is not available; nothing measured", file=sys.stderr)
        return 2
    with c.scratch("teardown", docker=True) as sc, tempfile.TemporaryDirectory() as mount:
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
        image = f"{sc.image_repository}:latest"  # quire tags its build :latest too
        # Warm-up (also builds the image, so raw containers share it).
        quire_teardown(sc, sha)
        raw_rm(sc, image, mount)
        quire_t: list[float] = []
        rm_t: list[float] = []
        both_t: list[float] = []
        stop_t: list[float] = []
        for rep in range(args.reps):
            steps = [
                lambda: quire_t.append(quire_teardown(sc, sha)),
                lambda: rm_t.append(raw_rm(sc, image, mount)),
                lambda rep=rep: both_t.append(raw_rm_untag(sc, image, mount, rep)),
            ]
            if rep % 2:
                steps.reverse()
            for step in steps:
                step()
            if rep < args.stop_reps:
                stop_t.append(raw_stop(sc, image, mount))
            print(
                f"rep {rep + 1}/{args.reps}: quire {quire_t[-1]:.3f}s  rm -f {rm_t[-1]:.3f}s  "
                f"rm -f + untag {both_t[-1]:.3f}s"
                + (f"  stop {stop_t[-1]:.3f}s" if rep < args.stop_reps else ""),
                flush=True,
            )
    q = c.median(quire_t)
    c.print_table(
        f"docker teardown, median of {args.reps} reps ({args.stop_reps} for docker stop)",
        [
            c.Row("quire teardown (absolute)", q, None, TARGET_ABS, check="quire"),
            c.Row("quire vs docker rm -f", q, c.median(rm_t), TARGET_RATIO),
            c.Row("quire vs rm -f + untag together", q, c.median(both_t), None, note="(info)"),
            c.Row("quire vs docker stop", q, c.median(stop_t) if stop_t else None, 1.0),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
