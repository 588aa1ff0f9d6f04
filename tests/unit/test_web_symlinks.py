"""Nothing outside the state directory is served, whatever symlink leads there."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from quire.web.app import create_app
from quire.web.live import RunFollower
from quire.web.lookup import StoreView
from tests.unit.test_web_support import Store, line, out, run_id

SECRET = "TOPSECRET-outside-the-store"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A job directory with a record and a log, outside the state directory."""
    place = Store(tmp_path / "elsewhere").add(99, jobs={"x": out(SECRET + "\n")})
    return place / "jobs" / "x"


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_app(store.state)
    with TestClient(app) as test_client:
        yield test_client
    app.state.web.index.close()


def urls(n: int, job: str) -> list[str]:
    run = f"/runs/proj/{run_id(n)}"
    return [
        run,
        f"{run}/jobs/{job}",
        f"{run}/jobs/{job}/output.txt",
        f"/api/runs/proj/{run_id(n)}",
        f"/live{run}",
        f"/live{run}?job={job}",
    ]


def assert_refused(client: TestClient, n: int, job: str) -> None:
    for url in urls(n, job):
        response = client.get(url)
        assert response.status_code == 404, url
        assert SECRET not in response.text, url
    listed = client.get("/").text + client.get("/api/runs").text + client.get("/api/runs/proj").text
    assert run_id(n) not in listed and SECRET not in listed


def test_a_job_directory_linked_outside_is_404_everywhere(
    store: Store, client: TestClient, outside: Path
) -> None:
    path = store.add(1, jobs={"a": out("fine\n")})
    os.symlink(outside, path / "jobs" / "evil")
    assert_refused(client, 1, "evil")
    assert_refused(client, 1, "a")  # the run's page would read the linked job's record


def test_a_job_log_linked_to_a_file_outside_is_404(
    store: Store, client: TestClient, outside: Path
) -> None:
    path = store.add(1, jobs={"a": out("fine\n")})
    log = path / "jobs" / "a" / "log.jsonl"
    log.unlink()
    os.symlink(outside / "log.jsonl", log)
    assert_refused(client, 1, "a")


def test_a_record_linked_outside_is_404(store: Store, client: TestClient, tmp_path: Path) -> None:
    path = store.add(1, jobs={"a": out("fine\n")})
    (tmp_path / "meta.yml").write_text(f"run_id: {SECRET}\n")
    (path / "meta.yml").unlink()
    os.symlink(tmp_path / "meta.yml", path / "meta.yml")
    assert_refused(client, 1, "a")


def test_a_run_directory_linked_outside_is_404(
    store: Store, client: TestClient, outside: Path
) -> None:
    store.add(1)
    os.symlink(outside.parent.parent, store.state / "runs" / "proj" / "complete" / run_id(2))
    assert_refused(client, 2, "x")


def test_a_repository_linked_outside_is_unknown(
    store: Store, client: TestClient, outside: Path
) -> None:
    store.add(1)
    os.symlink(outside.parents[3], store.state / "runs" / "evil")
    assert client.get("/runs/evil").status_code == 404
    assert client.get("/?repo=evil").status_code == 404
    assert client.get(f"/runs/evil/{run_id(99)}").status_code == 404
    assert client.get("/api/runs/evil").status_code == 404
    assert "evil" not in client.get("/").text


def test_a_latest_link_leading_outside_is_404(
    store: Store, client: TestClient, outside: Path
) -> None:
    store.add(1)
    latest = store.state / "runs" / "proj" / "latest"
    latest.unlink()
    # Its last part names a run that exists: only where it resolves counts.
    os.symlink(outside.parents[4] / "proj" / "complete" / run_id(1), latest)
    assert client.get("/runs/proj/latest", follow_redirects=False).status_code == 404


def test_links_that_stay_inside_the_state_directory_are_served(
    store: Store, tmp_path: Path
) -> None:
    first = store.add(1, jobs={"a": out("shared\n")})
    second = store.add(2, jobs={"a": out("own\n")})
    log = second / "jobs" / "a" / "log.jsonl"
    log.unlink()
    os.symlink(first / "jobs" / "a" / "log.jsonl", log)
    # The state directory itself may be a link: its real path is what counts.
    link = tmp_path / "state-link"
    os.symlink(store.state, link)
    app = create_app(link)
    with TestClient(app) as linked:
        assert "shared" in linked.get(f"/runs/proj/{run_id(2)}/jobs/a").text
        assert linked.get("/runs/proj/latest", follow_redirects=False).status_code == 307
        assert run_id(2) in linked.get("/").text
    app.state.web.index.close()


def test_a_follower_ends_when_a_job_linked_outside_appears(store: Store, outside: Path) -> None:
    path = store.add(1, state="active", jobs={"a": line("sh-start", cmd="make")})
    view = StoreView(store.state / "runs")
    follower = RunFollower(view, view.run("proj", run_id(1)), lambda run: {"html": ""})
    assert follower.poll()
    os.symlink(outside, path / "jobs" / "evil")
    messages = follower.poll()
    follower.close()
    assert messages[-1] == ("end", {"state": "gone"}) and follower.finished
    assert SECRET not in repr(messages)


def test_a_run_linked_outside_after_it_was_indexed_leaves_the_list(
    store: Store, client: TestClient, outside: Path
) -> None:
    path = store.add(1, state="active", jobs={"a": out("fine\n")})
    assert run_id(1) in client.get("/").text
    shutil.rmtree(path / "jobs" / "a")
    os.symlink(outside, path / "jobs" / "a")
    assert run_id(1) not in client.get("/").text
