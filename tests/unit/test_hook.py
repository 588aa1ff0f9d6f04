"""The post-receive hook: what a push queues, what it never does (fail, import heavy things),
and how install keeps (and uninstall restores) a hook that was there before."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from quire.ci.store.runs import store_for
from quire.paths import state_dir
from quire.service.errors import HookConflict
from quire.service.hook import parse_updates, queue_pushes, wanted
from quire.service.install import CHAINED, install, render_hook, uninstall
from quire.service.queue import Push, Queue, queue_path
from tests.helpers import GIT_ENV, commit, git, make_repo

ZERO = "0" * 40


@pytest.mark.parametrize(
    ("ref", "patterns", "expected"),
    [
        ("refs/heads/main", [], True),
        ("refs/tags/v1", [], True),
        ("refs/notes/quire", [], False),
        ("refs/heads/main", ["main"], True),
        ("refs/heads/feature/x", ["main"], False),
        ("refs/heads/release/1.2", ["release/*"], True),
        ("refs/tags/v1", ["main"], False),
        ("refs/tags/v1", ["main", "refs/tags/v*"], True),
    ],
)
def test_wanted_matches_branch_names_and_full_refs(
    ref: str, patterns: list[str], expected: bool
) -> None:
    assert wanted(ref, patterns) is expected


def test_deleted_refs_are_not_runs() -> None:
    text = f"{ZERO} {'a' * 40} refs/heads/new\n{'b' * 40} {ZERO} refs/heads/gone\n\n"
    assert parse_updates(text) == [("a" * 40, "refs/heads/new")]


def test_the_hook_script_execs_python_without_site_packages() -> None:
    text = render_hook(
        python="/opt/q/bin/python",
        package_root=Path("/opt/q src"),
        state=Path("/var/lib/quire"),
        patterns=["main"],
        chained=False,
    )
    assert text.startswith("#!/bin/sh\n")
    assert "exec /opt/q/bin/python -I -S -c " in text
    assert "'/opt/q src' --state-dir /var/lib/quire --pattern main\n" in text


# --- real pushes ------------------------------------------------------------------------------


def setup_push(tmp_path: Path, patterns: list[str] | None = None) -> tuple[Path, Path]:
    """A bare repository with quire's hook, and a clone to push from."""
    work = tmp_path / "work"
    make_repo(work, {"README": "hello\n"}, bare_clone=True)
    bare = tmp_path / "work.git"
    install(bare, patterns or [], state_dir())
    git(work, "remote", "add", "origin", str(bare))
    return bare, work


def push(work: Path, *refspecs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "push", "origin", *refspecs],
        cwd=work,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )


def queued() -> list[tuple[str, str]]:
    path = Path(queue_path(state_dir()))
    if not path.exists():
        return []
    with Queue(path) as queue:
        return [(e.ref, e.sha) for e in queue.active()]


def test_a_push_queues_one_run_per_branch_and_tag(tmp_path: Path) -> None:
    bare, work = setup_push(tmp_path)
    sha = commit(work, {"a": "1"})
    git(work, "tag", "v1")
    done = push(work, "HEAD:main", "HEAD:refs/heads/topic", "v1")
    assert done.returncode == 0, done.stderr
    assert sorted(queued()) == [
        ("refs/heads/main", sha),
        ("refs/heads/topic", sha),
        ("refs/tags/v1", sha),
    ]
    assert "quire: queued run" in done.stderr
    assert "no worker is running" in done.stderr
    with Queue(queue_path(state_dir())) as queue:
        entry = queue.active()[0]
    assert entry.git_dir == str(bare.resolve())
    assert entry.repo == store_for(bare).repo  # the store the run will be recorded in
    assert entry.pushed_at.endswith("Z")


def test_deleting_a_branch_queues_nothing(tmp_path: Path) -> None:
    _bare, work = setup_push(tmp_path)
    assert push(work, "HEAD:refs/heads/doomed").returncode == 0
    before = queued()
    done = push(work, ":refs/heads/doomed")
    assert done.returncode == 0, done.stderr
    assert queued() == before


def test_branch_patterns_select_what_runs(tmp_path: Path) -> None:
    _bare, work = setup_push(tmp_path, ["main", "release/*"])
    commit(work, {"a": "1"})
    assert (
        push(work, "HEAD:main", "HEAD:refs/heads/wip", "HEAD:refs/heads/release/2").returncode == 0
    )
    assert sorted(ref for ref, _ in queued()) == ["refs/heads/main", "refs/heads/release/2"]


def test_the_hook_imports_no_heavy_module(tmp_path: Path) -> None:
    bare, work = setup_push(tmp_path)
    hook = bare / "hooks" / "post-receive"
    # No quotes in the probe: the hook's -c program sits in single quotes.
    probe = "; print(*sorted(sys.modules), file=sys.stderr)"
    text = hook.read_text().replace("sys.exit(main())", "main()" + probe)
    hook.write_text(text)
    commit(work, {"a": "1"})
    done = push(work, "HEAD:main")
    # The probe's line names the hook's own modules (no line: the probe never ran, a failure).
    modules = next(line for line in done.stderr.splitlines() if "quire.service.queue" in line)
    loaded = {
        name.split(".")[0] if not name.startswith("quire") else name for name in modules.split()
    }
    heavy = {"typer", "pydantic", "plumbum", "yaml", "quire.ci", "quire.tools", "rich"}
    assert heavy.isdisjoint(loaded)
    assert not any(name.startswith(("quire.ci", "quire.tools")) for name in loaded)


def test_a_corrupt_queue_warns_the_pusher_and_the_push_succeeds(tmp_path: Path) -> None:
    bare, work = setup_push(tmp_path)
    path = Path(queue_path(state_dir()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"garbage " * 1000)
    sha = commit(work, {"a": "1"})
    done = push(work, "HEAD:main")
    assert done.returncode == 0
    assert "quire: warning: no CI run queued for refs/heads/main" in done.stderr
    assert "damaged" in done.stderr
    assert git(bare, "rev-parse", "main") == sha


def test_a_queue_truncated_under_its_workers_is_named_to_the_pusher(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = Path(queue_path(state))
    with Queue(path) as worker:  # a worker's connection keeps the WAL open
        worker.enqueue([Push("/srv/p.git", "refs/heads/old", "b" * 40, "2026-11-24T10:00:00Z")])
        os.truncate(path, 0)
        out = io.StringIO()
        assert queue_pushes(str(state), "/srv/p.git", [("a" * 40, "refs/heads/main")], out) == 0
    said = out.getvalue()
    assert "quire: warning: no CI run queued for refs/heads/main" in said
    assert f"the queue file {path} was replaced or truncated while workers had it open" in said
    assert "restart the workers" in said.lower()
    assert "database is locked" not in said


def test_an_unusable_state_directory_warns_and_the_push_succeeds(tmp_path: Path) -> None:
    bare, work = setup_push(tmp_path)
    state = state_dir()
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("a file where the state directory should be")
    sha = commit(work, {"a": "1"})
    done = push(work, "HEAD:main")
    assert done.returncode == 0
    assert "quire: warning: no CI run queued" in done.stderr
    assert git(bare, "rev-parse", "main") == sha


def test_an_earlier_hook_keeps_running_with_the_same_input(tmp_path: Path) -> None:
    work = tmp_path / "work"
    make_repo(work, {"README": "hello\n"}, bare_clone=True)
    bare = tmp_path / "work.git"
    seen = tmp_path / "seen.txt"
    earlier = bare / "hooks" / "post-receive"
    earlier.write_text(f"#!/bin/sh\ncat > '{seen}'\necho earlier-hook-ran\nexit 3\n")
    earlier.chmod(0o755)
    plan = install(bare, [], state_dir())
    assert plan.chained == bare / "hooks" / CHAINED
    git(work, "remote", "add", "origin", str(bare))
    sha = commit(work, {"a": "1"})
    done = push(work, "HEAD:main")
    assert done.returncode == 0
    assert "earlier-hook-ran" in done.stderr
    assert seen.read_text().split()[1:] == [sha, "refs/heads/main"]
    assert queued() == [("refs/heads/main", sha)]
    uninstall(bare)
    assert earlier.read_text().startswith("#!/bin/sh\ncat >")
    assert not (bare / "hooks" / CHAINED).exists()


def test_installing_twice_rewrites_quire_own_hook(tmp_path: Path) -> None:
    bare, _work = setup_push(tmp_path)
    plan = install(bare, ["main"], state_dir())
    assert plan.replaced and plan.chained is None
    assert "--pattern main" in (bare / "hooks" / "post-receive").read_text()


def test_install_refuses_when_both_hooks_are_taken(tmp_path: Path) -> None:
    bare = tmp_path / "b.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    for name in ("post-receive", CHAINED):
        (bare / "hooks" / name).write_text("#!/bin/sh\n")
    with pytest.raises(HookConflict, match="move one of them away"):
        install(bare, [], state_dir())


def test_uninstall_leaves_a_foreign_hook_alone(tmp_path: Path) -> None:
    bare = tmp_path / "b.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    (bare / "hooks" / "post-receive").write_text("#!/bin/sh\n")
    with pytest.raises(HookConflict, match="not quire's"):
        uninstall(bare)
    assert (bare / "hooks" / "post-receive").read_text() == "#!/bin/sh\n"


def test_hook_uses_core_hooks_path(tmp_path: Path) -> None:
    bare = tmp_path / "b.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(bare, "config", "core.hooksPath", str(tmp_path / "shared-hooks"))
    plan = install(bare, [], state_dir())
    assert plan.hook == tmp_path / "shared-hooks" / "post-receive"
    assert plan.hook.is_file()


def test_install_says_where_pushes_queue_without_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from quire.cli.app import app

    monkeypatch.delenv("QUIRE_DATABASE_URL", raising=False)
    git(tmp_path, "init", "-q", "--bare", str(tmp_path / "proj.git"))
    done = CliRunner().invoke(app, ["ci", "hook", "install", "--repo", str(tmp_path / "proj.git")])
    assert done.exit_code == 0, done.output
    assert f"pushes queue runs in {state_dir().resolve()}" in done.stdout


def test_install_with_a_database_names_it_not_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from quire.cli.app import app

    monkeypatch.setenv("QUIRE_DATABASE_URL", "postgresql://quire:sekrit@db.example:5433/ci")
    git(tmp_path, "init", "-q", "--bare", str(tmp_path / "proj.git"))
    done = CliRunner().invoke(app, ["ci", "hook", "install", "--repo", str(tmp_path / "proj.git")])
    assert done.exit_code == 0, done.output
    assert "pushes queue runs in the database postgresql://quire@db.example:5433/ci" in done.stdout
    assert "sekrit" not in done.stdout
    assert str(state_dir().resolve()) not in done.stdout
    # The variable in this shell is not the hook's: git runs it in the pusher's environment.
    assert "when git runs the hook" in done.stdout
