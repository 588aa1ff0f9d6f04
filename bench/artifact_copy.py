"""Keeping artifacts: `ArtifactKeeper.keep` (rt.artifact's copy, on quire's side) vs `cp`.

Measures, interleaved over several repetitions (alternating which goes first), with the
page cache warm for both sides:

- one big file (default 256 MiB of random bytes): keep() (links resolved by hand,
  O_NOFOLLOW opens, sha256 of every byte, the run's size limit counted) vs `cp` of
  the same file, and vs `cp` + `sha256sum` (what a script doing the same job runs);
- a directory of many small files (default 2000 x 4 KiB in 20 folders): keep() vs
  `cp -r`.

Each copy is removed after each rep. Target: ratio <= 2.0 against `cp` + `sha256sum`
(the honest comparison: keep() hashes), reported against plain `cp` too.

Run:  .venv/bin/python bench/artifact_copy.py [--size 256] [--files 2000] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import _common as c

from quire.ci.run.artifacts import ArtifactKeeper, Budget, WorkspaceTree

TARGET_RATIO = 2.0


def make_tree(root: Path, size_mib: int, files: int) -> None:
    (root / "big").mkdir(parents=True)
    with open(root / "big" / "blob.bin", "wb") as out:
        for _ in range(size_mib):
            out.write(os.urandom(1024 * 1024))
    for index in range(files):
        folder = root / "many" / f"d{index % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:05d}.txt").write_bytes(os.urandom(4096))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256, help="MiB of the big file")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qbench-artifacts-") as scratch:
        base = Path(scratch)
        workspace, run_path, raw = base / "workspace", base / "run", base / "raw"
        make_tree(workspace, args.size, args.files)
        tree = WorkspaceTree(workspace, str(workspace))
        times: dict[str, list[float]] = {}

        def keep(path: str) -> float:
            keeper = ArtifactKeeper(lambda: run_path, Budget(1 << 40))
            spent = c.timed(lambda: keeper.keep("bench", tree, path, None))
            shutil.rmtree(run_path)
            return spent

        def cp(*argvs: list[str]) -> float:
            raw.mkdir()
            spent = c.timed(lambda: [c.run(argv) for argv in argvs])
            shutil.rmtree(raw)
            return spent

        blob, many = workspace / "big" / "blob.bin", workspace / "many"
        measures = {
            "keep big": lambda: keep("big/blob.bin"),
            "cp big": lambda: cp(["cp", str(blob), str(raw / "blob.bin")]),
            "cp+sha256sum big": lambda: cp(
                ["cp", str(blob), str(raw / "blob.bin")], ["sha256sum", str(raw / "blob.bin")]
            ),
            "keep many": lambda: keep("many"),
            "cp -r many": lambda: cp(["cp", "-r", str(many), str(raw / "many")]),
        }
        for measure in measures.values():  # warm the page cache and the imports
            measure()
        for rep in range(args.reps):
            order = list(measures.items())
            for name, measure in order if rep % 2 == 0 else reversed(order):
                times.setdefault(name, []).append(measure())
        m = {name: c.median(values) for name, values in times.items()}
        c.print_table(
            f"rt.artifact's copy vs cp ({args.size} MiB file; {args.files} x 4 KiB files), "
            f"medians of {args.reps}",
            [
                c.Row(
                    "big file vs cp + sha256sum", m["keep big"], m["cp+sha256sum big"], TARGET_RATIO
                ),
                c.Row("big file vs cp", m["keep big"], m["cp big"], None),
                c.Row("small files vs cp -r", m["keep many"], m["cp -r many"], TARGET_RATIO),
            ],
        )


if __name__ == "__main__":
    main()
