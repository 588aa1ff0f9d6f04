"""A worker's mirror: the pushed object fetched by its id, else by its ref, only when the
mirror lacks it; a failure names the URL and the object. git is a fake here (the real one:
tests/integration/test_repository_url.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quire.ci.run import mirror
from quire.errors import FetchFailed
from quire.tools import process

SHA = "c" * 40
URL = "ssh://git@githost/proj.git"


class FakeGit:
    """A server holding `served` objects by id (`by_id`: whether it hands them out so)
    and refs; the mirror holds `held` objects. Records each fetch's refspec."""

    def __init__(self, *, by_id: bool = True, refs: dict[str, str] | None = None) -> None:
        self.by_id = by_id
        self.refs = refs or {}
        self.served = {SHA, *self.refs.values()}
        self.held: set[str] = set()
        self.fetches: list[str] = []
        self.inits = 0

    def init_bare(self, git_dir: Path) -> None:
        (git_dir / "objects").mkdir(parents=True)
        self.inits += 1

    def has_object(self, git_dir: Path, sha: str) -> bool:
        return sha in self.held

    def ref_target(self, git_dir: Path, ref: str) -> str | None:
        return None

    def fetch(self, git_dir: Path, url: str, refspec: str) -> process.Completed:
        self.fetches.append(refspec)
        source = refspec.lstrip("+").split(":")[0]
        if source in self.refs:
            self.held.add(self.refs[source])
            return process.Completed(("git",), 0, b"", b"")
        if self.by_id and source in self.served:
            self.held.add(source)
            return process.Completed(("git",), 0, b"", b"")
        return process.Completed(("git",), 1, b"", b"fatal: not our ref " + source.encode())


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeGit:
    fake = FakeGit(refs={"refs/heads/main": SHA})
    for name in ("init_bare", "has_object", "ref_target", "fetch"):
        monkeypatch.setattr(mirror.git, name, getattr(fake, name))
    return fake


def test_the_object_is_fetched_by_its_id_into_the_cache(fake: FakeGit, tmp_path: Path) -> None:
    path = mirror.fetch("proj-1a2b3c4d", URL, SHA, "refs/heads/main")
    assert path == tmp_path / "quire-home" / "cache" / "mirrors" / "proj-1a2b3c4d.git"
    assert fake.fetches == [f"+{SHA}:refs/quire/heads/main"]
    assert SHA in fake.held


def test_an_object_the_mirror_has_is_not_fetched_again(fake: FakeGit) -> None:
    mirror.fetch("proj-1a2b3c4d", URL, SHA, "refs/heads/main")
    mirror.fetch("proj-1a2b3c4d", URL, SHA, "refs/tags/v1")
    assert len(fake.fetches) == 1 and fake.inits == 1


def test_a_server_refusing_ids_is_asked_for_the_pushed_ref(
    fake: FakeGit,
) -> None:
    fake.by_id = False
    mirror.fetch("proj-1a2b3c4d", URL, SHA, "refs/heads/main")
    assert fake.fetches == [
        f"+{SHA}:refs/quire/heads/main",
        "+refs/heads/main:refs/quire/heads/main",
    ]


def test_a_ref_that_moved_on_fails_naming_the_url_and_the_object(fake: FakeGit) -> None:
    fake.by_id = False
    fake.refs["refs/heads/main"] = "d" * 40  # force-pushed since
    with pytest.raises(FetchFailed) as caught:
        mirror.fetch("proj-1a2b3c4d", URL, SHA, "refs/heads/main")
    assert URL in str(caught.value) and SHA in str(caught.value)
    assert "refs/heads/main" in str(caught.value)


def test_an_object_the_server_lacks_fails_with_what_git_said(fake: FakeGit) -> None:
    other = "e" * 40
    with pytest.raises(FetchFailed, match=f"cannot fetch {other} \\(refs/heads/gone\\) from {URL}"):
        mirror.fetch("proj-1a2b3c4d", URL, other, "refs/heads/gone")
    assert fake.fetches[-1] == "+refs/heads/gone:refs/quire/heads/gone"


def test_without_a_ref_only_the_id_is_tried(fake: FakeGit) -> None:
    fake.by_id = False
    with pytest.raises(FetchFailed, match="not our ref"):
        mirror.fetch("proj-1a2b3c4d", URL, SHA, None)
    assert fake.fetches == [f"+{SHA}:refs/quire/fetched"]


def test_pushed_refs_are_kept_under_refs_quire() -> None:
    assert mirror.keep_ref("refs/heads/release/1") == "refs/quire/heads/release/1"
    assert mirror.keep_ref("refs/tags/v1") == "refs/quire/tags/v1"


def test_a_fetch_takes_the_url_as_a_url_and_never_prompts(tmp_path: Path) -> None:
    from quire.tools import git

    argv = git.fetch_argv(tmp_path / "m.git", "--upload-pack=evil", "+a:refs/quire/x")
    assert argv[-3:] == ["--", "--upload-pack=evil", "+a:refs/quire/x"]
    assert "protocol.version=2" in argv and "--no-tags" in argv
    assert git.FETCH_ENV["GIT_TERMINAL_PROMPT"] == "0"


@pytest.mark.parametrize("pushed", ["/srv/git/proj.git", "/srv/work/proj/.git"])
def test_a_mirror_stands_for_the_pushed_repository_under_the_queues_name(pushed: str) -> None:
    from quire.ci.store.runs import store_of
    from quire.service.queue import repository_name
    from quire.tools import git

    repo = git.mirrored(Path("/cache/mirrors/x.git"), pushed)
    assert (repo.git_dir, repo.home, repo.bare) == (
        Path("/cache/mirrors/x.git"),
        Path(pushed),
        True,
    )
    # The worker finds the run's record by the queue's name for it: the same store.
    assert store_of(repo).repo == repository_name(pushed)


@pytest.mark.parametrize("ref", ["refs/heads/gone", None])
def test_a_failed_fetch_never_shows_a_password_in_the_url(fake: FakeGit, ref: str | None) -> None:
    # The message becomes the run's recorded failure: result.yml, the web, the run index.
    with pytest.raises(FetchFailed) as caught:
        mirror.fetch("proj-1a2b3c4d", "https://ci:s3cr%3At@githost/p.git", "e" * 40, ref)
    assert "s3cr" not in str(caught.value)
    assert "https://ci:***@githost/p.git" in str(caught.value)
