"""rt.artifact's copying, on quire's side: paths confined to the workspace (symlinks
included), names, sizes and sha256 in the records, the run's size limit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from quire.ci.run.artifacts import MAX_ENTRIES, ArtifactKeeper, Budget, ConfinedTree, WorkspaceTree
from quire.ci.vocabulary import format_size
from quire.errors import ArtifactRefused


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    (root / "dist" / "sub").mkdir(parents=True)
    (root / "dist" / "app.whl").write_bytes(b"wheel bytes")
    (root / "dist" / "sub" / "notes.txt").write_text("notes\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("do not keep")
    return root


@pytest.fixture
def run_path(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


def keeper(run_path: Path, limit: int = 1 << 30) -> ArtifactKeeper:
    return ArtifactKeeper(lambda: run_path, Budget(limit))


def tree(workspace: Path, absolute: str | None = None) -> WorkspaceTree:
    return WorkspaceTree(workspace, absolute or str(workspace))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_file_is_kept_under_its_name_with_size_and_sha256(
    workspace: Path, run_path: Path
) -> None:
    name, files = keeper(run_path).keep("build", tree(workspace), "dist/app.whl", None)
    assert name == "app.whl"
    assert (run_path / "artifacts" / "build" / "app.whl").read_bytes() == b"wheel bytes"
    assert [(f.name, f.path, f.size, f.sha256) for f in files] == [
        ("app.whl", "", 11, sha(b"wheel bytes"))
    ]


def test_a_directory_is_kept_whole_each_file_recorded_in_name_order(
    workspace: Path, run_path: Path
) -> None:
    name, files = keeper(run_path).keep("build", tree(workspace), "dist", "wheels")
    assert name == "wheels"
    assert [(f.relative, f.size) for f in files] == [
        ("wheels/app.whl", 11),
        ("wheels/sub/notes.txt", 6),
    ]
    kept = run_path / "artifacts" / "build" / "wheels" / "sub" / "notes.txt"
    assert kept.read_text() == "notes\n"
    assert files[1].sha256 == sha(b"notes\n")


@pytest.mark.parametrize("name", [".hidden", "a/b", "..", "-x", "", "x" * 129])
def test_names_that_are_not_one_plain_component_are_refused(
    workspace: Path, run_path: Path, name: str
) -> None:
    with pytest.raises(ArtifactRefused, match=r"job 'build'.*cannot name an artifact"):
        keeper(run_path).keep("build", tree(workspace), "dist/app.whl", name)


def test_the_same_name_twice_is_refused_and_the_first_is_kept(
    workspace: Path, run_path: Path
) -> None:
    keep = keeper(run_path)
    keep.keep("build", tree(workspace), "dist/app.whl", "out")
    with pytest.raises(ArtifactRefused, match="'out' is already kept"):
        keep.keep("build", tree(workspace), "dist/sub", "out")
    assert (run_path / "artifacts" / "build" / "out").read_bytes() == b"wheel bytes"


@pytest.mark.parametrize("path", ["../outside/secret", "dist/../../outside/secret"])
def test_a_path_out_of_the_workspace_is_refused_naming_the_job(
    workspace: Path, run_path: Path, path: str
) -> None:
    with pytest.raises(ArtifactRefused, match=r"job 'build'.*leads out of the workspace"):
        keeper(run_path).keep("build", tree(workspace), path, "x")
    assert not (run_path / "artifacts" / "build" / "x").exists()


def test_an_absolute_path_counts_only_under_the_workspace(
    workspace: Path, run_path: Path, tmp_path: Path
) -> None:
    keep = keeper(run_path)
    keep.keep("build", tree(workspace), str(workspace / "dist" / "app.whl"), "inside")
    with pytest.raises(ArtifactRefused, match="leads out of the workspace"):
        keep.keep("build", tree(workspace), str(tmp_path / "outside" / "secret"), "out")


def test_a_symlink_leading_out_is_refused(workspace: Path, run_path: Path, tmp_path: Path) -> None:
    (workspace / "escape").symlink_to(tmp_path / "outside" / "secret")
    with pytest.raises(ArtifactRefused, match=r"job 'build'.*'escape' leads out"):
        keeper(run_path).keep("build", tree(workspace), "escape", None)


def test_a_symlink_out_inside_a_kept_directory_refuses_it_all_and_leaves_nothing(
    workspace: Path, run_path: Path
) -> None:
    (workspace / "dist" / "sub" / "up").symlink_to("../../../outside/secret")
    budget = Budget(1 << 20)
    with pytest.raises(ArtifactRefused, match="'dist/sub/up' leads out of the workspace"):
        ArtifactKeeper(lambda: run_path, budget).keep("build", tree(workspace), "dist", None)
    assert not (run_path / "artifacts" / "build").exists()
    assert budget.used == 0  # what the partial copy took is given back


def test_a_directory_on_the_way_that_is_a_link_out_is_refused(
    workspace: Path, run_path: Path, tmp_path: Path
) -> None:
    (workspace / "via").symlink_to(tmp_path / "outside")
    with pytest.raises(ArtifactRefused, match="'via/secret' leads out"):
        keeper(run_path).keep("build", tree(workspace), "via/secret", None)


def test_links_inside_the_workspace_are_kept_as_what_they_point_to(
    workspace: Path, run_path: Path
) -> None:
    (workspace / "dist" / "latest.whl").symlink_to("app.whl")
    (workspace / "dist" / "sub" / "back").symlink_to(workspace / "dist" / "app.whl")
    _, files = keeper(run_path).keep("build", tree(workspace), "dist", None)
    by_path = {f.path: f for f in files}
    assert by_path["latest.whl"].sha256 == by_path["app.whl"].sha256
    assert by_path["sub/back"].size == 11
    assert not (run_path / "artifacts" / "build" / "dist" / "latest.whl").is_symlink()


def test_absolute_links_are_read_against_the_containers_workdir(
    workspace: Path, run_path: Path
) -> None:
    (workspace / "inside").symlink_to("/work/dist/app.whl")
    (workspace / "passwd").symlink_to("/etc/passwd")
    keep = keeper(run_path)
    _, files = keep.keep("build", tree(workspace, "/work"), "inside", None)
    assert files[0].sha256 == sha(b"wheel bytes")
    with pytest.raises(ArtifactRefused, match="'passwd' leads out of the workspace"):
        keep.keep("build", tree(workspace, "/work"), "passwd", None)


def test_a_link_back_to_a_directory_being_kept_is_a_loop_refused(
    workspace: Path, run_path: Path
) -> None:
    (workspace / "dist" / "sub" / "again").symlink_to("..")
    with pytest.raises(ArtifactRefused, match=r"'dist/sub/again' links back .*a loop"):
        keeper(run_path).keep("build", tree(workspace), "dist", None)


def test_a_fifo_is_refused_without_waiting_for_a_writer(workspace: Path, run_path: Path) -> None:
    os.mkfifo(workspace / "pipe")
    with pytest.raises(ArtifactRefused, match="'pipe' is neither a file nor a directory"):
        keeper(run_path).keep("build", tree(workspace), "pipe", None)


def test_a_missing_path_says_it_cannot_be_read(workspace: Path, run_path: Path) -> None:
    with pytest.raises(ArtifactRefused, match=r"job 'build'.*cannot read 'nope'"):
        keeper(run_path).keep("build", tree(workspace), "nope", None)


def test_the_run_limit_counts_every_job_and_fails_the_one_past_it(
    workspace: Path, run_path: Path
) -> None:
    budget = Budget(15)
    keep = ArtifactKeeper(lambda: run_path, budget)
    keep.keep("build", tree(workspace), "dist/app.whl", None)  # 11 bytes
    with pytest.raises(
        ArtifactRefused, match=r"job 'docs'.*limit of 15 B \(\[artifacts\] max_size"
    ):
        keep.keep("docs", tree(workspace), "dist/sub", None)  # 6 more
    assert budget.used == 11
    assert not (run_path / "artifacts" / "docs").exists()
    (workspace / "small").write_bytes(b"1234")
    keep.keep("docs", tree(workspace), "small", None)  # what is left still fits
    assert budget.used == 15


def test_exactly_the_limit_fits(workspace: Path, run_path: Path) -> None:
    budget = Budget(11)
    ArtifactKeeper(lambda: run_path, budget).keep("build", tree(workspace), "dist/app.whl", None)
    assert budget.used == 11


def test_confined_tree_walks_links_itself(workspace: Path, tmp_path: Path) -> None:
    (workspace / "a").symlink_to("dist/sub")
    (workspace / "b").symlink_to("a")
    confined = ConfinedTree(tree(workspace))
    try:
        found = confined.open("b/notes.txt")
        assert found.parts == ("dist", "sub", "notes.txt")
        os.close(found.fd)
    finally:
        confined.close()


def test_a_directory_swapped_for_a_link_out_during_the_copy_is_refused(
    workspace: Path, run_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command still running swaps dist/sub for a link after quire listed dist: the
    link is met when sub is opened, and refused like any other."""
    listdir = os.listdir

    def listed_then_swapped(fd: int) -> list[str]:
        names = listdir(fd)
        if "sub" in names and not (workspace / "dist" / "sub").is_symlink():
            (workspace / "dist" / "sub").rename(workspace / "dist" / "moved")
            (workspace / "dist" / "sub").symlink_to(tmp_path / "outside")
        return names

    monkeypatch.setattr(os, "listdir", listed_then_swapped)
    with pytest.raises(ArtifactRefused, match="'dist/sub' leads out of the workspace"):
        keeper(run_path).keep("build", tree(workspace), "dist", None)
    assert not list((run_path / "artifacts").rglob("secret"))


def test_a_path_that_only_begins_like_the_workspace_is_outside_it(
    workspace: Path, run_path: Path
) -> None:
    (workspace / "shop").mkdir()
    (workspace / "shop" / "x").write_text("inside, by another name")
    (workspace / "sneaky").symlink_to("/workshop/x")
    with pytest.raises(ArtifactRefused, match="'sneaky' leads out of the workspace"):
        keeper(run_path).keep("build", tree(workspace, "/work"), "sneaky", None)
    with pytest.raises(ArtifactRefused, match="leads out of the workspace"):
        keeper(run_path).keep("build", tree(workspace), f"{workspace}-other/x", "x")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536 * 1024, "1.5 MiB"),
        (5 << 40, "5120.0 GiB"),
    ],
)
def test_sizes_read_in_powers_of_1024(size: int, text: str) -> None:
    assert format_size(size) == text


def test_a_store_that_cannot_be_written_fails_the_job_saying_where(
    workspace: Path, run_path: Path
) -> None:
    (run_path / "artifacts").mkdir()
    (run_path / "artifacts" / "build").write_text("a file where the job's folder goes")
    with pytest.raises(ArtifactRefused, match=r"job 'build'.*could not be kept in"):
        keeper(run_path).keep("build", tree(workspace), "dist/app.whl", None)


def test_files_and_directories_are_counted_so_empty_ones_cannot_fill_the_store(
    workspace: Path, run_path: Path
) -> None:
    # Empty files take no bytes but an inode and a line of the record each; and links to
    # directories that are no loop (each level's two links to the next) double at every
    # level: 2**30 empty directories from 30 of the workspace's.
    level = workspace / "dag"
    level.mkdir()
    for depth in range(30):
        (level / f"d{depth + 1}").mkdir()
        (level / "a").symlink_to(f"d{depth + 1}")
        (level / "b").symlink_to(f"d{depth + 1}")
        level = level / f"d{depth + 1}"
    budget = Budget(1 << 30, max_entries=40)
    keep = ArtifactKeeper(lambda: run_path, budget)
    with pytest.raises(ArtifactRefused, match=r"job 'build'.*more than 40 files and directories"):
        keep.keep("build", tree(workspace), "dag", None)
    assert budget.entries == 0 and budget.used == 0  # given back with the partial copy
    assert not (run_path / "artifacts" / "build").exists()
    keep.keep("build", tree(workspace), "dist", None)  # 4 entries: still room
    assert budget.entries == 4


def test_exactly_the_entry_limit_fits(workspace: Path, run_path: Path) -> None:
    budget = Budget(1 << 30, max_entries=5)
    keep = ArtifactKeeper(lambda: run_path, budget)
    keep.keep("build", tree(workspace), "dist", None)  # dist, app.whl, sub, sub/notes.txt
    keep.keep("build", tree(workspace), "dist/app.whl", "wheel")  # the fifth
    with pytest.raises(ArtifactRefused, match="more than 5 files and directories"):
        keep.keep("build", tree(workspace), "dist/sub/notes.txt", None)
    assert budget.entries == 5


def test_the_default_entry_limit_is_the_documented_one() -> None:
    assert Budget(1).max_entries == MAX_ENTRIES == 100_000
