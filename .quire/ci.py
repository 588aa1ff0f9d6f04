"""quire's own pipeline: lint, type-check and unit-test quire with quire.

Commands run with the Python that runs quire (`sys.executable`), so the
tools come from the environment quire was installed into with `.[dev]`.
"""

import sys

from quire.ci import Runtime, job

PY = sys.executable


@job(inputs=["quire/push"])
def lint(rt: Runtime) -> None:
    rt.sh([PY, "-m", "ruff", "check", "."], check=True)
    rt.sh([PY, "-m", "ruff", "format", "--check", "."], check=True)


@job(inputs=["quire/push"])
def typecheck(rt: Runtime) -> None:
    rt.sh([PY, "-m", "mypy"], check=True)


@job("unit-tests", inputs=["lint"])
def unit_tests(rt: Runtime) -> dict[str, str]:
    result = rt.sh([PY, "-m", "pytest", "-q", "tests/unit"], check=True)
    return {"summary": result.stdout.strip().splitlines()[-1]}
