"""Where `quire ci runs | show | logs` and `serve` read runs from.

LocalRuns     no database: the state directory's own `runs/` (as always)
IndexedRuns   a database configured: the run index on PostgreSQL, through the mirror
              under this machine's state directory (quire.service.pgindex.reader),
              synced first; every worker's runs, a run id found in any repository,
              a running run's liveness by its lease
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from quire.ci.store.runs import RunDir, RunStore
    from quire.service.pgindex.reader import MirrorRuns


class RunSource(Protocol):
    """The runs a reading command sees."""

    def store(self, repo: Path) -> RunStore: ...
    def stores(self) -> list[RunStore]: ...
    def find(self, repo: Path, ref: str) -> tuple[RunStore, RunDir]: ...
    def liveness(self) -> Callable[[RunDir], bool] | None: ...
    def gone(self) -> str: ...
    def following(self) -> AbstractContextManager[object]: ...


class LocalRuns:
    """The runs of this state directory."""

    def store(self, repo: Path) -> RunStore:
        from quire.ci.store.runs import store_for

        return store_for(repo)

    def stores(self) -> list[RunStore]:
        from quire.ci.store.reconcile import all_stores

        return all_stores()

    def find(self, repo: Path, ref: str) -> tuple[RunStore, RunDir]:
        store = self.store(repo)
        return store, store.find(ref)

    def liveness(self) -> Callable[[RunDir], bool] | None:
        return None  # the runner's pid on this host

    def gone(self) -> str:
        from quire.ci.store.views import LOCAL_RUNNER_GONE

        return LOCAL_RUNNER_GONE

    def following(self) -> AbstractContextManager[object]:
        return nullcontext()


class IndexedRuns:
    """Every worker's runs, from the run index on PostgreSQL."""

    def __init__(self, url: str) -> None:
        from quire.paths import state_dir
        from quire.service.pgschema import require_psycopg

        require_psycopg(url)  # before the reader, which imports psycopg
        from quire.service.pgindex.reader import MirrorRuns

        self.runs: MirrorRuns = MirrorRuns(url, state_dir())

    def store(self, repo: Path) -> RunStore:
        from quire.errors import NotARepository
        from quire.paths import repo_id
        from quire.tools import git

        try:
            found = git.open_repository(repo)
        except NotARepository as exc:
            # Readers of the index often sit in no repository (a web or laptop machine).
            raise NotARepository(
                f"{exc}; `quire ci runs --all` lists every repository's runs, and a run id "
                "(or a unique prefix) is found in any repository"
            ) from exc
        return self.runs.store(repo_id(found.name_dir.name, found.git_dir))

    def stores(self) -> list[RunStore]:
        return self.runs.stores()

    def find(self, repo: Path, ref: str) -> tuple[RunStore, RunDir]:
        if ref == "latest":
            store = self.store(repo)
            return store, store.find(ref)
        return self.runs.find(ref)

    def liveness(self) -> Callable[[RunDir], bool] | None:
        return self.runs.alive

    def gone(self) -> str:
        return (
            "its worker's lease ran out: the worker or its machine is gone, or cut off from "
            "the database; a live worker queues the run again"
        )

    def following(self) -> AbstractContextManager[object]:
        return self.runs.follower()


def run_source() -> RunSource:
    """The run index when a database is configured, else the local run store."""
    from quire.service.queues import database_url

    url = database_url()
    return LocalRuns() if url is None else IndexedRuns(url)
