"""The layers DESIGN.md draws, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

QUIRE = Path(__file__).resolve().parents[2] / "quire"


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def files(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        target = QUIRE / part
        found.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return found


@pytest.mark.parametrize(
    "path",
    files(
        "ci/events.py",
        "ci/vocabulary.py",
        "ci/pipeline.py",
        "ci/run/executors",
        "ci/run/runtime.py",
        "ci/run/jobs.py",
        "jobhost",
    ),
    ids=lambda p: str(p.relative_to(QUIRE)),
)
def test_the_run_side_never_imports_the_store(path: Path) -> None:
    assert not [name for name in imported(path) if name.startswith("quire.ci.store")]


@pytest.mark.parametrize("path", files("jobhost", "ci/pipeline.py", "errors.py"), ids=str)
def test_what_the_job_host_loads_imports_only_the_standard_library_and_itself(
    path: Path,
) -> None:
    """The job host starts for every run and runs sandboxed with nothing installed."""
    allowed = ("quire.jobhost", "quire.ci.pipeline", "quire.errors")
    third_party = {"pydantic", "plumbum", "typer", "yaml", "rich", "starlette", "psutil"}
    for name in imported(path):
        if name.startswith("quire"):
            assert name in ("quire", "quire.ci") or name.startswith(allowed), (path, name)
        else:
            assert name.split(".")[0] not in third_party, (path, name)


def test_ci_package_init_imports_only_the_pipeline_api() -> None:
    names = imported(QUIRE / "ci" / "__init__.py")
    assert names == {"quire.ci.pipeline", "quire.jobhost.runtime"}


@pytest.mark.parametrize(
    "path",
    [p for p in files(".") if QUIRE / "tools" / "docker" not in p.parents],
    ids=lambda p: str(p.relative_to(QUIRE)),
)
def test_only_the_docker_package_reaches_into_its_own_modules(path: Path) -> None:
    """Callers use what quire/tools/docker/__init__.py re-exports (`docker.run_detached`):
    its modules (the CLI runner above all) may move between each other freely."""
    assert not [name for name in imported(path) if name.startswith("quire.tools.docker.")]


@pytest.mark.parametrize("path", files("ci"), ids=lambda p: str(p.relative_to(QUIRE)))
def test_the_core_never_imports_the_service_the_web_or_the_cli(path: Path) -> None:
    """DESIGN.md: `service` and `web` call the core, never the other way round (the run
    index's shipping and mirror live in ci/store, its SQL in service/pgindex)."""
    upward = ("quire.service", "quire.web", "quire.cli")
    assert not [name for name in imported(path) if name.startswith(upward)]


def imported_at_load(path: Path) -> set[str]:
    """The modules `path` imports when it is loaded: its top-level statements (not those in
    functions, nor under `if TYPE_CHECKING`)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


@pytest.mark.parametrize(
    "path",
    files(
        "service/worker.py",
        "service/queue.py",
        "service/pglite.py",
        "service/pgschema.py",
        "service/pgindex/publisher.py",
        "cli/run_source.py",
        "ci/store",
        "ci/run/mirror.py",
    ),
    ids=lambda p: str(p.relative_to(QUIRE)),
)
def test_what_runs_without_a_database_loads_no_psycopg(path: Path) -> None:
    """psycopg is an extra (`quire[postgres]`): a worker, the hook and the readers on the
    SQLite queue load these, so psycopg comes only inside what runs with a database."""
    assert not [name for name in imported_at_load(path) if name.split(".")[0] == "psycopg"]
    assert "quire.service.pgqueue" not in imported_at_load(path)
