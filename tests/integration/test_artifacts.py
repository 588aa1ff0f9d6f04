"""rt.artifact for real: host and container runs (bind and copy workspaces, docker and
podman), the files downloaded with `quire ci artifacts --out` and from the web page over
HTTP, and an escape through a symlink refused."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.support import Engine
from tests.integration.test_docker_runs import DOCKERFILE, Quire, quire_run, repo_with
from tests.integration.test_web_server import serve

pytestmark = pytest.mark.integration

# The wheel holds every byte value: nothing on the way may treat it as text.
WHEEL = bytes(range(256)) * 64

PIPELINE = """
from quire.ci import job

@job(inputs=["quire/push"])
def build(rt):
    rt.sh("mkdir -p dist/html && cp payload.bin dist/app-1.0.whl", check=True)
    rt.sh("echo '<script>alert(1)</script>' > dist/html/index.html", check=True)
    rt.sh("ln -s app-1.0.whl dist/latest.whl", check=True)
    rt.artifact("dist")
    rt.artifact("./dist/app-1.0.whl", name="wheel")

@job(inputs=["build"])
def escape(rt):
    rt.sh("ln -s /etc/passwd leak", check=True)
    rt.artifact("leak")

@job(inputs=["build"])
def escape_dir(rt):
    rt.sh("mkdir -p out && ln -s ../../.. out/up", check=True)
    rt.artifact("out")
"""


def write_config(text: str) -> None:
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def run_pipeline(tmp_path: Path, name: str, *args: str) -> Quire:
    files: dict[str, str | bytes] = {
        ".quire/ci.py": PIPELINE,
        ".quire/Dockerfile": DOCKERFILE,
        "payload.bin": WHEEL,
    }
    return quire_run(repo_with(tmp_path, name, files), *args)


def quire(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quire", "ci", *args, "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def check_kept(done: Quire, tmp_path: Path) -> None:
    """What every executor must leave: the files, their records, the refusals."""
    assert done.code == 1, done.stdout + done.stderr  # the escapes fail their jobs
    build = done.job_state("build")
    assert build["status"] == "success", build
    recorded = {(a["name"], a["path"]): (a["size"], a["sha256"]) for a in build["artifacts"]}
    wheel = (len(WHEEL), hashlib.sha256(WHEEL).hexdigest())
    assert recorded[("wheel", "")] == wheel
    assert recorded[("dist", "app-1.0.whl")] == wheel
    assert recorded[("dist", "latest.whl")] == wheel  # a link inside: kept as its file
    for job, what in (("escape", "'leak'"), ("escape_dir", "'out/up'")):
        state = done.job_state(job)
        assert state["status"] == "failed"
        assert f"job {job!r}" in state["error"] and f"{what} leads out" in state["error"]
        assert state["artifacts"] == []
    assert os.listdir(done.run().path / "artifacts") == ["build"]  # nothing of the others

    out = tmp_path / "downloaded"
    copied = quire(done.repo, "artifacts", "latest", "build", "--out", str(out))
    assert copied.returncode == 0, copied.stderr
    assert (out / "build" / "wheel").read_bytes() == WHEEL
    assert (out / "build" / "dist" / "latest.whl").read_bytes() == WHEEL
    listed = quire(done.repo, "artifacts").stdout.splitlines()
    assert ["build", "wheel", "16.0", "KiB", wheel[1]] in [line.split() for line in listed]


def test_host_run_keeps_artifacts_and_the_web_page_serves_them(tmp_path: Path) -> None:
    done = run_pipeline(tmp_path, "host-artifacts", "--executor", "host")
    check_kept(done, tmp_path)
    run = done.run()
    with serve(tmp_path / "serve.log") as served:
        page_url = f"{served.url}runs/{run.store.repo}/{run.run_id}"
        with urllib.request.urlopen(page_url, timeout=10) as page:
            html = page.read().decode()
        link = f"/runs/{run.store.repo}/{run.run_id}/artifacts/build/wheel"
        assert f'href="{link}"' in html
        with urllib.request.urlopen(served.url + link.lstrip("/"), timeout=10) as got:
            assert got.read() == WHEEL
            assert got.headers["Content-Type"] == "application/octet-stream"
            assert got.headers["Content-Disposition"].startswith('attachment; filename="wheel"')
        html_link = link.replace("/wheel", "/dist/html/index.html")
        with urllib.request.urlopen(served.url + html_link.lstrip("/"), timeout=10) as got:
            assert got.headers["Content-Type"] == "application/octet-stream"
            assert got.headers["X-Content-Type-Options"] == "nosniff"
            assert got.headers["Content-Disposition"].startswith("attachment;")
        for sneaky in ("..%2F..%2Fmeta.yml", "dist%2F..%2F..%2F..%2Flog.jsonl", "dist"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{served.url}{link.lstrip('/')}/../{sneaky}", timeout=10)
            assert refused.value.code == 404
            refused.value.close()


@pytest.mark.engines("docker", "podman")
def test_container_run_with_the_workspace_bound_keeps_artifacts(
    tmp_path: Path, engine: Engine
) -> None:
    write_config('[docker]\nworkspace = "bind"\n')
    check_kept(run_pipeline(tmp_path, f"bind-artifacts-{engine.name}"), tmp_path)


@pytest.mark.engines("docker", "podman-remote")
def test_container_run_with_the_workspace_copied_keeps_artifacts(
    tmp_path: Path, engine: Engine
) -> None:
    if engine.name == "docker":
        write_config('[docker]\nworkspace = "copy"\n')  # a remote engine copies by itself
    check_kept(run_pipeline(tmp_path, f"copy-artifacts-{engine.name}"), tmp_path)


def test_the_run_limit_fails_the_job_past_it(tmp_path: Path) -> None:
    write_config("[artifacts]\nmax_size = 20000\n")
    done = run_pipeline(tmp_path, "limited", "--executor", "host")
    build = done.job_state("build")
    assert build["status"] == "failed"
    assert "past its limit of 19.5 KiB ([artifacts] max_size" in build["error"]
    assert build["artifacts"] == []


SIDE_BY_SIDE = """
from quire.ci import job

@job(inputs=["quire/push"])
def left(rt):
    rt.sh("mkdir -p l && head -c 300000 payload.bin > l/part && cp payload.bin l/", check=True)
    rt.artifact("l")

@job(inputs=["quire/push"])
def right(rt):
    rt.sh("mkdir -p r && cp payload.bin r/", check=True)
    rt.artifact("r")
"""


def test_jobs_side_by_side_keep_artifacts_at_once_in_copy_mode(tmp_path: Path) -> None:
    write_config('[docker]\nworkspace = "copy"\n')
    files: dict[str, str | bytes] = {
        ".quire/ci.py": SIDE_BY_SIDE,
        ".quire/Dockerfile": DOCKERFILE,
        "payload.bin": WHEEL,
    }
    repo = repo_with(tmp_path, "side-by-side", files)
    done = quire_run(repo, "--jobs", "2", "--keep-workspace")
    assert done.code == 0, done.stdout + done.stderr
    for job, name in (("left", "l"), ("right", "r")):
        kept = done.job_state(job)["artifacts"]
        assert {(a["name"], a["path"]) for a in kept} >= {(name, "payload.bin")}
        assert (done.run().path / "artifacts" / job / name / "payload.bin").read_bytes() == WHEEL
    kept_tree = done.run().workspace
    assert (kept_tree / "payload.bin").is_file()  # kept: its folder is there to look in
    assert sorted(p.name for p in kept_tree.parent.iterdir()) == ["workspace"]  # no copy left
