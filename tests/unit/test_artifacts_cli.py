"""rt.artifact in a real host run, and `quire ci artifacts | show | prune` reading it back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from quire.ci.store.runs import store_for
from quire.cli.app import app
from tests.helpers import make_repo

PIPELINE = """
from quire.ci import job

@job(inputs=["quire/push"])
def build(rt):
    rt.sh("mkdir -p dist/docs && printf wheel > dist/app.whl")
    rt.sh("printf '<h1>x</h1>' > dist/docs/index.html")
    assert rt.artifact("dist") == "dist"
    rt.artifact("dist/app.whl", name="wheel")
    rt.sh("ln -s /etc/passwd leak")
    try:
        rt.artifact("leak")
    except Exception as exc:
        rt.log(f"refused: {type(exc).__name__}")
    return {"ok": True}

@job(inputs=["build"])
def escape(rt):
    rt.sh("ln -s .. up")
    rt.artifact("up/..")
"""


def quire(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_repo(tmp_path / "proj", {".quire/ci.py": PIPELINE})
    result = quire("ci", "run", "--repo", str(tmp_path / "proj"))
    assert result.exit_code == 1, result.output  # `escape` fails
    return tmp_path / "proj"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_artifacts_lists_each_kept_file_with_size_and_sha256(repo: Path) -> None:
    result = quire("ci", "artifacts", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["job", "artifact", "size", "sha256"]
    assert rows[1:] == [
        ["build", "dist/app.whl", "5", "B", sha(b"wheel")],
        ["build", "dist/docs/index.html", "10", "B", sha(b"<h1>x</h1>")],
        ["build", "wheel", "5", "B", sha(b"wheel")],
    ]


def test_a_refused_escape_fails_its_job_naming_it_and_keeps_nothing(repo: Path) -> None:
    shown = json.loads(quire("ci", "show", "--json", "--repo", str(repo)).stdout)
    jobs = {job["job_id"]: job for job in shown["jobs"]}
    assert jobs["build"]["status"] == "success"  # it caught ArtifactRefused for `leak`
    assert jobs["escape"]["status"] == "failed"
    assert "job 'escape'" in jobs["escape"]["error"]
    assert "leads out of the workspace" in jobs["escape"]["error"]
    assert jobs["escape"]["artifacts"] == []
    logs = quire("ci", "logs", "latest", "build", "--repo", str(repo)).stdout
    assert "refused: ArtifactRefused" in logs


def test_show_and_its_json_list_the_artifacts(repo: Path) -> None:
    text = quire("ci", "show", "--repo", str(repo)).stdout
    assert f"artifact wheel  5 B  sha256:{sha(b'wheel')}" in text
    shown = json.loads(quire("ci", "show", "--json", "--repo", str(repo)).stdout)
    build = next(job for job in shown["jobs"] if job["job_id"] == "build")
    assert build["artifacts"][2] == {
        "name": "wheel",
        "path": "",
        "size": 5,
        "sha256": sha(b"wheel"),
    }


def test_artifacts_json_and_one_job(repo: Path) -> None:
    rows = json.loads(
        quire("ci", "artifacts", "latest", "build", "--json", "--repo", str(repo)).stdout
    )
    assert [(r["job"], r["name"], r["path"]) for r in rows] == [
        ("build", "dist", "app.whl"),
        ("build", "dist", "docs/index.html"),
        ("build", "wheel", ""),
    ]
    none = quire("ci", "artifacts", "latest", "escape", "--repo", str(repo))
    assert "kept no artifacts" in none.stdout
    unknown = quire("ci", "artifacts", "latest", "nope", "--repo", str(repo))
    assert unknown.exit_code == 2
    assert "has no job 'nope'" in unknown.output


def test_out_copies_them_into_job_and_name(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = quire("ci", "artifacts", "--out", str(out), "--repo", str(repo))
    assert result.exit_code == 0, result.output
    assert "3 file(s) copied" in result.stdout
    assert (out / "build" / "wheel").read_bytes() == b"wheel"
    assert (out / "build" / "dist" / "docs" / "index.html").read_bytes() == b"<h1>x</h1>"


def test_out_refuses_a_file_changed_since_it_was_kept(repo: Path, tmp_path: Path) -> None:
    run = store_for(repo).find("latest")
    (run.path / "artifacts" / "build" / "wheel").write_bytes(b"tampered")
    result = quire("ci", "artifacts", "--out", str(tmp_path / "out"), "--repo", str(repo))
    assert result.exit_code == 2
    assert "no longer matches the sha256" in result.output
    assert not (tmp_path / "out" / "build" / "wheel").exists()


def test_out_never_follows_a_link_planted_in_the_store(repo: Path, tmp_path: Path) -> None:
    run = store_for(repo).find("latest")
    kept = run.path / "artifacts" / "build" / "wheel"
    kept.unlink()
    kept.symlink_to("/etc/passwd")
    result = quire("ci", "artifacts", "--out", str(tmp_path / "out"), "--repo", str(repo))
    assert result.exit_code == 2
    assert "artifact 'build/wheel'" in result.output and "a link" in result.output


def test_prune_removes_the_artifacts_with_their_run(repo: Path) -> None:
    run = store_for(repo).find("latest")
    assert (run.path / "artifacts" / "build" / "wheel").is_file()
    result = quire("ci", "prune", "--keep", "0", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    assert not run.path.exists()
    assert not list(run.store.root.rglob("artifacts"))


def test_out_that_cannot_be_written_says_so_not_an_internal_error(
    repo: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file, not a directory")
    result = quire("ci", "artifacts", "--out", str(taken), "--repo", str(repo))
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output
    assert f"--out {taken}" in result.output
    assert taken.read_text() == "a file, not a directory"
