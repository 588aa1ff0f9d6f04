"""The copy workspace mode, against an engine that cannot see this machine's files.

`podman-remote` (conftest.py) is podman's API service in a mount namespace
where this session's temp directory, and so every workspace, is hidden
under an empty tmpfs, reached by the docker CLI over tcp:// as a remote
engine would be: quire picks the copy mode by itself. The same run against
the local docker engine with `[docker] workspace = "copy"` shows the mode
does not depend on the engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import git
from tests.integration.support import Engine
from tests.integration.test_docker_runs import DOCKERFILE, quire_run, repo_with

pytestmark = pytest.mark.integration

TREE = """
from quire.ci import job

@job(inputs=["quire/push"])
def tree(rt):
    listing = rt.sh("cd /work && find . -type f | sort", check=True).stdout.split()
    hello = rt.sh(["cat", "/work/hello.txt"], check=True).stdout
    rt.sh("echo made in the container > /work/artifact.txt && rm /work/src/main.c", check=True)
    return {"files": listing, "hello": hello}
"""


def write_config(text: str) -> None:
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def copy_repo(tmp_path: Path, name: str) -> Path:
    """A committed tree, then a working tree that differs from it."""
    files: dict[str, str | bytes] = {
        ".quire/ci.py": TREE,
        ".quire/Dockerfile": DOCKERFILE,
        "hello.txt": "committed\n",
        "src/main.c": "int x;\n",
    }
    repo = repo_with(tmp_path, name, files)
    (repo / "hello.txt").write_text("edited, not committed\n")
    (repo / "untracked.txt").write_text("never committed\n")
    return repo


@pytest.mark.engines("docker", "podman-remote")
def test_copy_mode_runs_the_commits_tree_and_keep_workspace_brings_work_back(
    tmp_path: Path, engine: Engine
) -> None:
    if engine.name == "docker":
        write_config('[docker]\nworkspace = "copy"\n')  # a remote engine needs no config
    repo = copy_repo(tmp_path, "copied")
    done = quire_run(repo, "--keep-workspace")
    assert done.code == 0, done.stdout + done.stderr
    out = done.outputs("tree")
    assert out["files"] == ["./.quire/Dockerfile", "./.quire/ci.py", "./hello.txt", "./src/main.c"]
    assert out["hello"] == "committed\n"
    kept = done.run().workspace
    assert (kept / "artifact.txt").read_text() == "made in the container\n"
    assert (kept / "hello.txt").read_text() == "committed\n"
    assert not (kept / "src" / "main.c").exists()  # removed in the container: gone here too
    assert not (kept / "untracked.txt").exists()
    assert git(repo, "status", "--porcelain") == "M hello.txt\n?? untracked.txt".strip()


@pytest.mark.engines("podman-remote")
def test_copy_mode_without_keep_workspace_leaves_the_local_tree_untouched(
    tmp_path: Path, engine: Engine
) -> None:
    repo = copy_repo(tmp_path, "copied-gone")
    done = quire_run(repo)
    assert done.code == 0, done.stdout + done.stderr
    assert done.outputs("tree")["hello"] == "committed\n"
    assert not done.run().workspace.exists()
    record = done.container_record()
    assert record["container_started_at"] and record["container_stopped_at"]


@pytest.mark.engines("podman-remote")
def test_a_bind_mount_the_engine_cannot_see_is_exit_3_naming_the_copy_mode(
    tmp_path: Path, engine: Engine
) -> None:
    # Without the check, docker's CLI against podman's API creates the missing
    # source as an empty directory and the run passes on an empty /work.
    write_config('[docker]\nworkspace = "bind"\n')
    repo = copy_repo(tmp_path, "bound")
    done = quire_run(repo)
    assert done.code == 3, done.stdout + done.stderr
    assert "does not see this machine's files" in done.stderr
    assert 'workspace = "copy"' in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.run().state.value == "failed"
    assert not (done.run().path / "jobs" / "tree" / "log.jsonl").exists()
