"""The containers quire made that the engine still holds (for reconcile): ids by
`ps --quiet`, then their labels by `inspect` (podman's `ps` has no `.Label`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from quire.errors import DockerUnavailable
from quire.tools import process
from quire.tools.docker.cli import Background, binary, daemon_unreachable, run
from quire.tools.docker.naming import HOST_LABEL, REPO_LABEL, RUN_ID_LABEL, STORE_LABEL


@dataclass(frozen=True)
class LabelledContainer:
    container_id: str
    run_id: str
    repo: str


def list_argv(store: str, host: str, run_id: str | None = None) -> list[str]:
    """Full ids of every container (running or not) of run store `store` made by quire
    on `host` (and of run `run_id` only, if given). Ids only: podman's `ps` cannot
    format labels; `labels_argv` reads them."""
    run_filter = f"label={RUN_ID_LABEL}" + (f"={run_id}" if run_id else "")
    return [
        binary(),
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        run_filter,
        "--filter",
        f"label={STORE_LABEL}={store}",
        "--filter",
        f"label={HOST_LABEL}={host}",
    ]


def labels_argv(container_ids: Sequence[str]) -> list[str]:
    """Each container's full id and its labels as JSON, one line each (docker and podman)."""
    return [
        binary(),
        "container",
        "inspect",
        "--format",
        "{{.Id}}\t{{json .Config.Labels}}",
        *container_ids,
    ]


class ContainerListing(Background[list[LabelledContainer]]):
    """`labelled_containers`, its `ps` begun in the background: the list is as it was
    when `ps` ran."""

    def __init__(self, store: str, host: str, run_id: str | None = None) -> None:
        self.store = store
        self.host = host
        super().__init__(list_argv(store, host, run_id))

    def _read(self, done: process.Completed) -> list[LabelledContainer]:
        if not done.ok:
            raise DockerUnavailable(f"docker is unavailable: {done.stderr_tail(3)}")
        ids = done.stdout.decode(errors="replace").split()
        if not ids:
            return []
        # One may go between the two calls: inspect still prints the others (and exits 1).
        inspected = run(labels_argv(ids))
        if not inspected.ok and daemon_unreachable(inspected.stderr_tail(3)):
            raise DockerUnavailable(f"docker is unavailable: {inspected.stderr_tail(3)}")
        found = []
        for line in inspected.stdout.decode(errors="replace").splitlines():
            container = _labelled(line, self.store, self.host)
            if container is not None:
                found.append(container)
        return found


def labelled_containers(
    store: str, host: str, run_id: str | None = None
) -> list[LabelledContainer]:
    """Every container (running or not) of run store `store` made on `host` with a quire
    run-id label (that of `run_id` only, if given).

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    return ContainerListing(store, host, run_id).result()


def _labelled(line: str, store: str, host: str) -> LabelledContainer | None:
    """One `labels_argv` line, if it is a quire container of `store` on `host`."""
    container_id, _, raw = line.partition("\t")
    try:
        labels = json.loads(raw)
    except ValueError:
        return None
    if not container_id or not isinstance(labels, dict):
        return None  # `null` (no labels at all), or a line that is not ours
    run_id = labels.get(RUN_ID_LABEL)
    if not isinstance(run_id, str) or not run_id:
        return None
    # The engine filtered already; an engine that ignored a filter must not make us judge
    # another store's or another host's container.
    if labels.get(STORE_LABEL) != store or labels.get(HOST_LABEL) != host:
        return None
    repo = labels.get(REPO_LABEL)
    return LabelledContainer(container_id, run_id, repo if isinstance(repo, str) else "")
