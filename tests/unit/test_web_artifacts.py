"""Artifacts on the web page: listed on the run page, served as downloads only, never a
file the job's record does not list, never through a link."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from quire.ci.store.records import JobState, read_record, write_record
from quire.ci.vocabulary import ArtifactFile
from quire.web.app import create_app
from quire.web.downloads import disposition
from tests.unit.test_web_support import Store, out, run_id

PAGE = b"<script>alert(1)</script>"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_app(store.state)
    with TestClient(app) as test_client:
        yield test_client
    app.state.web.index.close()


def keep(run: Path, job: str, relative: str, data: bytes) -> None:
    """Write an artifact file as rt.artifact does, and list it in the job's record."""
    target = run / "artifacts" / job / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    name, _, path = relative.partition("/")
    state_path = run / "jobs" / job / "state.yml"
    state = read_record(state_path, JobState)
    digest = hashlib.sha256(data).hexdigest()
    state.artifacts.append(ArtifactFile(name=name, path=path, size=len(data), sha256=digest))
    write_record(state_path, state)


@pytest.fixture
def run(store: Store) -> Path:
    path = store.add(1, jobs={"build": out("built\n")})
    keep(path, "build", "site/index.html", PAGE)
    keep(path, "build", "wheel", b"wheel")
    return path


URL = f"/runs/proj/{run_id(1)}/artifacts/build"


def test_the_run_page_lists_artifacts_with_download_links(run: Path, client: TestClient) -> None:
    page = client.get(f"/runs/proj/{run_id(1)}")
    assert page.status_code == 200
    assert f'href="{URL}/site/index.html" download>site/index.html</a>' in page.text
    assert hashlib.sha256(b"wheel").hexdigest() in page.text


def test_a_download_is_an_attachment_of_octet_stream_never_a_page(
    run: Path, client: TestClient
) -> None:
    got = client.get(f"{URL}/site/index.html")
    assert got.status_code == 200
    assert got.content == PAGE
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"].startswith('attachment; filename="index.html"')
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-length"] == str(len(PAGE))
    assert got.headers["x-quire-sha256"] == hashlib.sha256(PAGE).hexdigest()


@pytest.mark.parametrize(
    "path",
    [
        "../state.yml",
        "..%2Fstate.yml",
        "%2e%2e/%2e%2e/meta.yml",
        "site%2F..%2Fwheel",
        "site",
        "nope",
        "/etc/passwd",
        "site%2Findex.html%00",
    ],
)
def test_anything_but_a_listed_file_is_not_found(run: Path, client: TestClient, path: str) -> None:
    got = client.get(f"{URL}/{path}")
    assert got.status_code == 404
    assert got.content != PAGE and got.content != b"wheel"


def test_a_file_in_the_artifacts_folder_the_record_does_not_list_is_not_served(
    run: Path, client: TestClient
) -> None:
    (run / "artifacts" / "build" / "unlisted").write_text("not recorded")
    assert client.get(f"{URL}/unlisted").status_code == 404
    assert client.get(f"/runs/proj/{run_id(1)}/artifacts/nojob/wheel").status_code == 404


def test_a_listed_file_replaced_by_a_link_is_not_followed(
    run: Path, client: TestClient, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    kept = run / "artifacts" / "build" / "wheel"
    kept.unlink()
    kept.symlink_to(secret)
    got = client.get(f"{URL}/wheel")
    assert got.status_code == 404
    assert b"host secret" not in got.content


def test_a_listed_directory_replaced_by_a_link_is_not_followed(
    run: Path, client: TestClient, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("elsewhere")
    site = run / "artifacts" / "build" / "site"
    (site / "index.html").unlink()
    site.rmdir()
    site.symlink_to(elsewhere)
    assert client.get(f"{URL}/site/index.html").status_code == 404


def test_names_outside_ascii_get_a_fallback_and_the_exact_name() -> None:
    assert disposition('rés"ult.txt') == (
        "attachment; filename=\"r_s_ult.txt\"; filename*=UTF-8''r%C3%A9s%22ult.txt"
    )


def test_latest_in_a_download_link_is_the_newest_runs_file(
    run: Path, store: Store, client: TestClient
) -> None:
    # docs/web.md gives it as a stable link for scripts: the newest run's file, or a 404.
    got = client.get("/runs/proj/latest/artifacts/build/wheel")
    assert got.status_code == 200 and got.content == b"wheel"
    store.add(2, jobs={"build": out("built again\n")})
    assert client.get("/runs/proj/latest/artifacts/build/wheel").status_code == 404
