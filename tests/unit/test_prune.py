"""`quire ci prune`: which runs, workspaces, image tags and caches go; a live run never does.

The run store is real (in tmp); docker is a PATH-free shim on $QUIRE_DOCKER that
records its argv and answers `image ls`, `volume ls|inspect|rm` and `image rm`
from files the test writes.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quire.ci.store.liveness import process_start_ticks
from quire.ci.store.prune import PruneOptions, describe, prune, run_started, selected
from quire.ci.store.records import ExecutorKind, RunMeta, RunnerInfo
from quire.ci.store.runs import RunDir, RunState, RunStore
from quire.cli.app import app
from quire.paths import state_dir
from tests.helpers import write_shim

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEAD_PID = 2**22 + 12345  # above pid_max: never alive


def run_id(days_ago: float, suffix: str = "aaaaaa") -> str:
    when = NOW - timedelta(days=days_ago)
    return when.strftime("%Y%m%d-%H%M%S-%f-") + suffix


@dataclass
class Repo:
    store: RunStore
    git_dir: Path

    def add(
        self, days_ago: float, state: RunState = RunState.complete, *, live: bool = False
    ) -> RunDir:
        ident = run_id(days_ago, f"{len(list(self.store.runs())):06x}")

        def meta(made: str) -> RunMeta:
            return RunMeta(
                run_id=made,
                repo=self.store.repo,
                git_dir=str(self.git_dir),
                revision="HEAD",
                sha="0" * 40,
                pushed_at=NOW - timedelta(days=days_ago),
                executor=ExecutorKind.docker,
            )

        pid = os.getpid() if live else DEAD_PID
        runner = RunnerInfo(pid=pid, host=socket.gethostname(), pid_start=process_start_ticks(pid))
        run = self.store.create(meta, runner, run_id=ident)
        if state != RunState.pending:
            run.transition(RunState.active)
        if state in (RunState.complete, RunState.failed):
            run.transition(state)
        workspace = run.workspace
        workspace.mkdir(parents=True)
        (workspace / "file.txt").write_text("x" * 1000)
        return run


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    git_dir = tmp_path / "proj" / ".git"
    git_dir.mkdir(parents=True)
    return Repo(RunStore("proj-1a2b3c4d"), git_dir)


def snapshot(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots for p in root.rglob("*"))


def options(**given: object) -> PruneOptions:
    return PruneOptions(now=NOW, **given)  # type: ignore[arg-type]


# --- which runs ----------------------------------------------------------------------------------


def test_run_started_reads_the_time_out_of_a_run_id() -> None:
    assert run_started("20261124-163403-849470-769bb8") == datetime(
        2026, 11, 24, 16, 34, 3, 849470, tzinfo=UTC
    )
    assert run_started("not-a-run-id") is None


def test_without_keep_or_older_than_no_run_is_selected(repo: Repo) -> None:
    repo.add(30)
    assert selected(list(repo.store.runs()), options()) == []


def test_keep_spares_the_newest_runs_and_older_than_the_recent_ones(repo: Repo) -> None:
    old, middle, new = repo.add(30), repo.add(10), repo.add(1)
    runs = list(repo.store.runs())
    assert [r.run_id for r in selected(runs, options(keep=1))] == [middle.run_id, old.run_id]
    week = timedelta(days=7)
    assert [r.run_id for r in selected(runs, options(older_than=week))] == [
        middle.run_id,
        old.run_id,
    ]
    both = options(keep=2, older_than=timedelta(days=5))
    assert [r.run_id for r in selected(runs, both)] == [old.run_id]
    everything = [r.run_id for r in selected(runs, options(keep=0))]
    assert everything == [new.run_id, middle.run_id, old.run_id]


# --- records and workspaces ----------------------------------------------------------------------


def test_prune_removes_old_runs_with_their_workspaces_and_repoints_latest(repo: Repo) -> None:
    old, failed, new = repo.add(30), repo.add(20, RunState.failed), repo.add(1)
    report = prune(None, options(keep=1))
    removed = {(r.kind, r.target) for r in report.removed}
    assert removed == {
        ("run", f"proj-1a2b3c4d/{old.run_id}"),
        ("run", f"proj-1a2b3c4d/{failed.run_id}"),
    }
    assert [r.run_id for r in repo.store.runs()] == [new.run_id]
    assert not old.path.exists() and not old.workspace.exists()
    assert new.workspace.exists()
    assert repo.store.find("latest").run_id == new.run_id
    assert all(r.size and r.size >= 1000 for r in report.removed)  # records + workspace


def test_latest_goes_with_the_last_run(repo: Repo) -> None:
    repo.add(30)
    prune(None, options(keep=0))
    assert list(repo.store.runs()) == []
    assert not (repo.store.root / "latest").is_symlink()


def test_a_live_run_is_never_touched_whatever_the_criteria(repo: Repo) -> None:
    live_active = repo.add(40, RunState.active, live=True)
    live_pending = repo.add(41, RunState.pending, live=True)
    report = prune(None, options(keep=0, older_than=timedelta(0), caches=True))
    assert report.removed == []
    assert live_active.path.is_dir() and live_active.workspace.is_dir()
    assert live_pending.path.is_dir() and live_pending.workspace.is_dir()
    assert f"proj-1a2b3c4d/{live_active.run_id}: running, left alone" in report.notes


def test_an_orphaned_run_is_left_to_reconcile(repo: Repo) -> None:
    orphan = repo.add(40, RunState.active, live=False)
    report = prune(None, options(keep=0))
    assert report.removed == []
    assert orphan.path.is_dir()
    assert any("quire ci reconcile" in note for note in report.notes)


def test_a_workspace_whose_run_is_gone_is_removed(repo: Repo) -> None:
    kept = repo.add(1)
    leftover = repo.store.workspace_root / run_id(3, "ffffff") / "workspace"
    leftover.mkdir(parents=True)
    (leftover / "big").write_bytes(b"0" * 5000)
    report = prune(None, options())
    assert [(r.kind, r.size) for r in report.removed] == [("workspace", 5000)]
    assert not leftover.parent.exists()
    assert kept.workspace.is_dir()


def test_dry_run_changes_nothing_and_reports_the_same(repo: Repo) -> None:
    repo.add(30), repo.add(20), repo.add(1)
    (repo.store.workspace_root / run_id(3, "ffffff")).mkdir(parents=True)
    roots = (state_dir(), repo.store.workspace_root)
    before = snapshot(*roots)
    dry = prune(None, options(keep=1, dry_run=True))
    assert snapshot(*roots) == before
    real = prune(None, options(keep=1))
    assert [(r.kind, r.target, r.size) for r in dry.removed] == [
        (r.kind, r.target, r.size) for r in real.removed
    ]
    assert len(real.removed) == 3


def test_repo_limits_prune_to_one_repository(repo: Repo, tmp_path: Path) -> None:
    other = Repo(RunStore("other-5e6f7a8b"), repo.git_dir)
    repo.add(30), repo.add(1)
    kept = other.add(30)
    prune([repo.store], options(keep=1))
    assert kept.path.is_dir()
    assert len(list(repo.store.runs())) == 1


# --- docker: image tags and caches ---------------------------------------------------------------

SHIM = """\
echo "$*" >> "{state}/calls"
case "$1 $2" in
  "image ls") cat "{state}/images" ;;
  "volume ls") cat "{state}/volumes" ;;
  "volume inspect") cat "{state}/volume-inspect" ;;
  "image rm") echo "Untagged: $3" ;;
  "volume rm")
    if grep -qx "$3" "{state}/busy"; then echo "volume is in use - [c0ffee]" >&2; exit 1; fi
    echo "$3" ;;
  *) echo "unexpected: $*" >&2; exit 97 ;;
esac
"""


@dataclass
class FakeEngine:
    state: Path

    def images(self, *names: str) -> None:
        lines = [name.replace(":", "\t", 1) for name in names]
        (self.state / "images").write_text("".join(f"{line}\n" for line in lines))

    def volumes(self, repos: dict[str, str], *, busy: tuple[str, ...] = ()) -> None:
        """`repos`: volume name -> its quire.repo label."""
        (self.state / "volumes").write_text("".join(f"{name}\n" for name in repos))
        lines = []
        for name, owner in repos.items():
            labels = {"quire.store": str(state_dir()), "quire.repo": owner, "quire.cache": "pip"}
            lines.append(f"{name}\t/nowhere/{name}\t{json.dumps(labels)}\n")
        (self.state / "volume-inspect").write_text("".join(lines))
        (self.state / "busy").write_text("".join(f"{name}\n" for name in busy))

    def calls(self) -> list[str]:
        log = self.state / "calls"
        return log.read_text().splitlines() if log.exists() else []

    def removals(self) -> list[str]:
        return [call for call in self.calls() if " rm " in f" {call} "]


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    state = tmp_path / "engine"
    state.mkdir()
    shim = write_shim(state / "bin", "docker", SHIM.format(state=state))
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    fake = FakeEngine(state)
    fake.images()
    fake.volumes({})
    return fake


def test_image_tags_of_finished_runs_go_and_a_live_runs_tag_stays(
    repo: Repo, engine: FakeEngine
) -> None:
    done = repo.add(30)
    other = Repo(RunStore("busy-9a9a9a9a"), repo.git_dir)
    live = other.add(2, RunState.active, live=True)
    engine.images(
        f"quire-ci/{repo.store.repo}:{done.run_id}",
        f"localhost/quire-ci/{repo.store.repo}:latest",  # the repository still exists: stays
        f"quire-ci/{other.store.repo}:{live.run_id}",
        f"quire-ci/{other.store.repo}:latest",
        f"quire-ci/{repo.store.repo}:{run_id(0.01, 'bbbbbb')}",  # unknown, too recent to judge
        f"quire-ci/{repo.store.repo}:{run_id(3, 'cccccc')}",  # unknown, past the ceiling
        f"quire-ci/not-in-this-store-12345678:{run_id(30)}",
        "busybox:latest",
    )
    report = prune(None, options())
    assert engine.removals() == [
        f"image rm quire-ci/{repo.store.repo}:{done.run_id}",
        f"image rm quire-ci/{repo.store.repo}:{run_id(3, 'cccccc')}",
    ]
    assert [r.kind for r in report.removed] == ["image", "image"]


def test_latest_goes_when_the_repository_no_longer_exists(repo: Repo, engine: FakeEngine) -> None:
    repo.add(1)
    engine.images(f"quire-ci/{repo.store.repo}:latest")
    repo.git_dir.rmdir()
    report = prune(None, options())
    assert engine.removals() == [f"image rm quire-ci/{repo.store.repo}:latest"]
    assert "no longer exists" in report.removed[0].detail


def test_caches_go_only_when_asked_and_never_those_of_a_running_repository(
    repo: Repo, engine: FakeEngine
) -> None:
    repo.add(1)
    busy = Repo(RunStore("busy-9a9a9a9a"), repo.git_dir)
    busy.add(1, RunState.active, live=True)
    engine.volumes(
        {
            "quire-cache-proj-1a2b3c4d-pip": repo.store.repo,
            "quire-cache-busy-9a9a9a9a-pip": busy.store.repo,
            "quire-cache-gone-11111111-npm": "gone-11111111",
        },
        busy=("quire-cache-gone-11111111-npm",),  # in use by someone: the engine refuses
    )
    prune(None, options())
    assert engine.removals() == []
    report = prune(None, options(caches=True))
    assert engine.removals() == [
        "volume rm quire-cache-proj-1a2b3c4d-pip",
        "volume rm " + ("quire-cache-gone-11111111-npm"),
    ]
    assert [r.target for r in report.removed] == ["quire-cache-proj-1a2b3c4d-pip"]
    assert any("busy-9a9a9a9a is running" in note for note in report.notes)
    assert any("volume is in use" in note for note in report.notes)


def test_repo_limits_the_caches_to_that_repository(repo: Repo, engine: FakeEngine) -> None:
    repo.add(1)
    engine.volumes({"quire-cache-proj-1a2b3c4d-pip": repo.store.repo})
    prune([repo.store], options(caches=True))
    listed = [call for call in engine.calls() if call.startswith("volume ls")]
    assert listed == [
        "volume ls --quiet --filter label=quire.cache --filter "
        f"label=quire.store={state_dir()} --filter label=quire.repo={repo.store.repo}"
    ]


def test_dry_run_asks_the_engine_but_removes_nothing(repo: Repo, engine: FakeEngine) -> None:
    done = repo.add(30)
    engine.images(f"quire-ci/{repo.store.repo}:{done.run_id}")
    engine.volumes({"quire-cache-proj-1a2b3c4d-pip": repo.store.repo})
    report = prune(None, options(keep=0, caches=True, dry_run=True))
    assert engine.removals() == []
    assert [r.kind for r in report.removed] == ["run", "image", "cache"]
    assert done.path.is_dir()


def test_without_an_engine_records_are_still_pruned(repo: Repo) -> None:
    repo.add(30)  # the unit suite's docker guard fails every docker call
    report = prune(None, options(keep=0))
    assert [r.kind for r in report.removed] == ["run"]
    assert any(note.startswith("images and caches not checked") for note in report.notes)


# --- the command ---------------------------------------------------------------------------------


def test_describe_says_what_went_and_the_space_freed(repo: Repo) -> None:
    repo.add(30)
    report = prune(None, options(keep=0, dry_run=True))
    lines = list(describe(report, dry_run=True))
    assert lines[0].startswith(f"would remove run proj-1a2b3c4d/{run_id(30, '000000')}")
    assert lines[-1].startswith("would free ")


def test_prune_command_dry_run_prints_and_keeps(repo: Repo) -> None:
    old = repo.add(30)
    repo.add(1)
    result = CliRunner().invoke(app, ["ci", "prune", "--all", "--keep", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would remove run proj-1a2b3c4d/{old.run_id}" in result.output
    assert old.path.is_dir()
    result = CliRunner().invoke(app, ["ci", "prune", "--all", "--keep", "1"])
    assert result.exit_code == 0, result.output
    assert f"removed run proj-1a2b3c4d/{old.run_id}" in result.output
    assert "freed " in result.output
    assert not old.path.exists()


def test_prune_means_the_current_repository_and_all_means_every_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.ci.store.runs import store_for
    from tests.helpers import make_repo

    ci = 'from quire.ci import job\n\n@job(inputs=["quire/push"])\ndef a(rt):\n    pass\n'
    repos = [tmp_path / "one", tmp_path / "two"]
    for path in repos:
        make_repo(path, {".quire/ci.py": ci})
        for _ in range(2):
            ran = CliRunner().invoke(app, ["ci", "run", "--quiet", "--repo", str(path)])
            assert ran.exit_code == 0, ran.output

    def count(path: Path) -> int:
        return len(list(store_for(path).runs()))

    monkeypatch.chdir(repos[0])
    result = CliRunner().invoke(app, ["ci", "prune", "--keep", "1"])
    assert result.exit_code == 0, result.output
    assert (count(repos[0]), count(repos[1])) == (1, 2)

    monkeypatch.chdir(tmp_path)  # no repository here
    refused = CliRunner().invoke(app, ["ci", "prune", "--keep", "1"])
    assert refused.exit_code == 2
    assert "--all" in refused.output
    assert count(repos[1]) == 2
    both = CliRunner().invoke(app, ["ci", "prune", "--all", "--repo", str(repos[1])])
    assert both.exit_code == 2

    result = CliRunner().invoke(app, ["ci", "prune", "--all", "--keep", "0"])
    assert result.exit_code == 0, result.output
    assert (count(repos[0]), count(repos[1])) == (0, 0)
