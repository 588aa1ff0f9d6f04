"""Where a do-nothing run's start-up goes, in instructions (valgrind), free of timing noise.

Wall-clock start-up figures on a shared VM swing by a third from one minute
to the next; instruction counts do not (the same count twice, whatever else
the machine does). Each line runs one python process under
`valgrind --tool=callgrind` (children not traced: git, tar and `true` are not
counted) and prints the instructions it executed, next to the floor it
stands on:

- `python -c pass`: the interpreter alone;
- the floor: a python importing what no run can do without (pydantic's
  models, typer, PyYAML, plumbum) and defining one pydantic model (which
  pulls in pydantic's model machinery), ending as quire does, without the
  interpreter's teardown;
- `quire --help`, and `quire ci run --help` (a subcommand's parsing: typer
  0.29 imported pydantic for it, one reason typer is kept below 0.29);
- a do-nothing host run (`quire ci run`, one job that runs no command: under
  valgrind a command cannot be waited for), and the share of it above the
  floor: quire's own.

Run:  .venv/bin/python bench/startup_instructions.py
Needs valgrind (`apt-get install valgrind`). Takes about a minute.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import _common as c

FLOOR = """\
import pydantic.main, typer, yaml, plumbum
from pydantic import BaseModel, ConfigDict

class Probe(BaseModel):
    model_config = ConfigDict(defer_build=True)
    a: int = 1

import os
os._exit(0)  # as quire ends (quire/cli/finish.py): no interpreter teardown
"""

# A job that runs no command: valgrind does not know pidfd_open, which quire waits
# for a host command with, so under it a command would fail.
PIPELINE = """\
    from quire.ci import job

    @job(inputs=["quire/push"])
    def bench(rt):
        rt.log("nothing to do")
    """


def instructions(argv: list[str], env: dict[str, str]) -> int:
    """Instructions the process `argv` executed, as callgrind counts them."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed; nothing measured", file=sys.stderr)
        return 2
    with c.scratch("startup") as sc:
        sc.commit({".quire/ci.py": PIPELINE})
        env = c.quire_env(sc)
        python = sys.executable
        run = [python, c.QUIRE, "ci", "run", "--repo", str(sc.repo)]
        subprocess.run(run, env=env, capture_output=True, check=True)  # bytecode cache
        counts = {
            "python -c pass": instructions([python, "-c", "pass"], env),
            "floor: the libraries, one model": instructions([python, "-c", FLOOR], env),
            "quire --help": instructions([python, c.QUIRE, "--help"], env),
            "quire ci run --help": instructions([python, c.QUIRE, "ci", "run", "--help"], env),
            "host run (quire ci run)": instructions(run, env),
        }
    floor = counts["floor: the libraries, one model"]
    counts["host run above the floor"] = counts["host run (quire ci run)"] - floor
    total = counts["host run (quire ci run)"]
    print("\ninstructions of one process (callgrind), start-up of a do-nothing run")
    print(f"{'measure':<34}  {'instructions':>14}  {'of the run':>10}")
    print(f"{'-' * 34}  {'-' * 14}  {'-' * 10}")
    for name, count in counts.items():
        print(f"{name:<34}  {count / 1e6:>12.0f} M  {count / total:>9.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
