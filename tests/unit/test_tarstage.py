"""Copy mode's artifacts: /work taken out of the container as a tar stream, every member
checked, and read like any workspace (links resolved against /work, never followed)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from plumbum import local

from quire.ci.run import tarstage
from quire.ci.run.artifacts import ArtifactKeeper, Budget, WorkspaceTree
from quire.errors import ArtifactRefused
from quire.tools import docker
from quire.tools.docker import WorkspaceCopyFailed
from tests.helpers import write_shim


def archive(*members: tuple[str, str, bytes | str]) -> bytes:
    """A tar of (name, kind, body): kind "dir", "file" (bytes), "sym" or "hard" (target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, body in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "file":
                assert isinstance(body, bytes)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = str(body)
                tar.addfile(info)
    return buffer.getvalue()


WORK = archive(
    ("./", "dir", b""),
    ("./dist/", "dir", b""),
    ("./dist/app.whl", "file", b"wheel"),
    ("./dist/same.whl", "hard", "./dist/app.whl"),
    ("./dist/latest", "sym", "/work/dist/app.whl"),
    ("./passwd", "sym", "/etc/passwd"),
)


def test_members_are_unpacked_and_links_made_as_links_never_followed(tmp_path: Path) -> None:
    tarstage.unpack(io.BytesIO(WORK), tmp_path)
    assert (tmp_path / "dist" / "app.whl").read_bytes() == b"wheel"
    assert (tmp_path / "dist" / "same.whl").read_bytes() == b"wheel"
    assert os.readlink(tmp_path / "passwd") == "/etc/passwd"
    assert os.readlink(tmp_path / "dist" / "latest") == "/work/dist/app.whl"


def test_the_unpacked_work_is_read_against_work_links_out_refused(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    tarstage.unpack(io.BytesIO(WORK), staging)
    keeper = ArtifactKeeper(lambda: tmp_path / "run", Budget(1 << 20))
    work = WorkspaceTree(staging, "/work")
    _, files = keeper.keep("build", work, "dist/latest", None)
    assert files[0].size == 5
    with pytest.raises(ArtifactRefused, match=r"job 'build'.*'passwd' leads out"):
        keeper.keep("build", work, "passwd", None)


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ((("../evil", "file", b"x"),), "a member named '../evil'"),
        ((("/etc/evil", "file", b"x"),), "a member named '/etc/evil'"),
        ((("./l", "sym", "OUTSIDE"), ("./l/evil", "file", b"x")), "'./l/evil' under a link"),
        ((("./h", "hard", "/etc/passwd"),), "a member named '/etc/passwd'"),
        ((("./h", "hard", "./later"), ("./later", "file", b"x")), "no file before it"),
    ],
)
def test_members_that_would_land_outside_are_refused(
    tmp_path: Path, members: tuple[tuple[str, str, bytes | str], ...], problem: str
) -> None:
    outside = tmp_path / "outside"  # what a link member points at, never written through
    outside.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    members = tuple(
        (name, kind, str(outside) if body == "OUTSIDE" else body) for name, kind, body in members
    )
    with pytest.raises(ArtifactRefused, match=problem):
        tarstage.unpack(io.BytesIO(archive(*members)), staging)
    assert not (tmp_path / "evil").exists()
    assert list(outside.iterdir()) == []


def test_a_hard_link_over_a_link_member_writes_nothing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    members = archive(
        ("./f", "file", b"from the container"),
        ("./l", "sym", str(outside / "victim")),
        ("./l", "hard", "./f"),  # the same name again: a second member is no new file
    )
    with pytest.raises(ArtifactRefused, match="could not be unpacked"):
        tarstage.unpack(io.BytesIO(members), staging)
    assert list(outside.iterdir()) == []


def test_a_stream_that_is_no_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactRefused, match="could not be read as tar"):
        tarstage.unpack(io.BytesIO(b"this is not tar" * 100), tmp_path)


def test_work_tar_argv_copies_works_contents_to_stdout() -> None:
    assert docker.work_tar_argv("c0ffee")[1:] == ["cp", "c0ffee:/work/.", "-"]


def test_read_work_streams_the_engines_tar_into_the_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work.tar").write_bytes(WORK)
    shim = write_shim(tmp_path / "bin", "docker", f'cat "{tmp_path / "work.tar"}"\n')
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    staging = tmp_path / "staging"
    staging.mkdir()
    with local.env():
        docker.read_work("c0ffee", lambda stream: tarstage.unpack(stream, staging))
    assert (staging / "dist" / "app.whl").read_bytes() == b"wheel"


def test_read_work_says_what_the_engine_said_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shim = write_shim(
        tmp_path / "bin", "docker", 'echo "Error: No such container: c0ffee" >&2\nexit 1\n'
    )
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    with pytest.raises(WorkspaceCopyFailed, match="No such container: c0ffee"):
        docker.read_work("c0ffee", lambda stream: tarstage.unpack(stream, tmp_path))
