"""`quire ci runs | show | logs` through typer's CliRunner, on real runs of real repos in tmp."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from quire.ci.store.runs import RunState, store_for
from quire.cli.app import app
from tests.helpers import commit, make_repo

runner = CliRunner()

# Every byte value, invalid UTF-8, CR/LF mixes, characters of 2-4 bytes, a long
# random tail (several reads, some split inside a character) and no final newline.
PAYLOAD = (
    b"plain line\n"
    + "café ✓ 𝄞\n".encode()
    + b"bad \xff\xfe bytes\n\x00nul\tTab\r\ncarriage\rreturn\n"
    + bytes(range(256))
    + random.Random(7).randbytes(300_000)
    + "tail é".encode()
    + b" no trailing newline"
)
ERR_PAYLOAD = b"warning: \xc3 broken\nlast err line\n"

EMIT = """
import sys
out = sys.stdout.buffer
data = open("payload.bin", "rb").read()
for start in range(0, len(data), 65537):
    out.write(data[start:start + 65537])
    out.flush()
sys.stderr.buffer.write(open("err.bin", "rb").read())
"""

EMIT_CI = """
import sys
from quire.ci import job

@job(inputs=["quire/push"])
def emit(rt):
    rt.sh([sys.executable, "emit.py"], check=True)
"""

THREE_JOBS = """
from quire.ci import job

@job(inputs=["quire/push"])
def first(rt):
    rt.sh("echo one from first")
    return {"answer": 42, "words": ["a", "b"]}

@job(inputs=["first"])
def second(rt):
    rt.sh("echo two from second; exit 3", check=True)

@job(inputs=["second"])
def third(rt):
    rt.sh("echo never")
"""

PASSING = """
from quire.ci import job

@job(inputs=["quire/push"])
def only(rt):
    rt.sh(["echo", "fine"])
"""


def quire(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ci_run(repo: Path) -> Result:
    result = quire("ci", "run", "--repo", str(repo))
    assert result.exit_code in (0, 1), result.output
    return result


def common_prefix(ids: list[str]) -> str:
    """The longest string every id starts with."""
    shortest = min(ids, key=len)
    for size in range(len(shortest), 0, -1):
        if all(run_id.startswith(shortest[:size]) for run_id in ids):
            return shortest[:size]
    return ""


def runs_json(repo: Path) -> list[dict[str, Any]]:
    result = quire("ci", "runs", "--repo", str(repo), "--json")
    assert result.exit_code == 0, result.output
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def emit_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "emitter"
    files: dict[str, str | bytes] = {
        ".quire/ci.py": EMIT_CI,
        "emit.py": EMIT,
        "payload.bin": PAYLOAD,
        "err.bin": ERR_PAYLOAD,
    }
    make_repo(repo, files)
    return repo


def emit_header() -> bytes:
    return b"==> emit\n$ " + shlex.join([sys.executable, "emit.py"]).encode() + b"\n"


@pytest.fixture
def three_jobs(tmp_path: Path) -> Path:
    repo = tmp_path / "three"
    make_repo(repo, {".quire/ci.py": THREE_JOBS})
    ci_run(repo)
    return repo


# --- runs -----------------------------------------------------------------------------------------


def test_runs_lists_every_run_newest_first_with_state_revision_and_executor(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "proj"
    first_sha = make_repo(repo, {".quire/ci.py": PASSING})
    ci_run(repo)
    second_sha = commit(repo, {".quire/ci.py": THREE_JOBS})
    ci_run(repo)
    result = quire("ci", "runs", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "state",
        "revision",
        "executor",
        "trigger",
        "started",
        "duration",
    ]
    assert len(lines) == 3
    newer, older = lines[1], lines[2]
    assert "failed (jobs-failed)" in newer
    assert f"HEAD {second_sha[:12]}" in newer
    assert "complete" in older and "failed" not in older
    assert f"HEAD {first_sha[:12]}" in older
    assert all(" host " in line and " push " in line for line in (newer, older))
    ids = [run["id"] for run in runs_json(repo)]
    assert newer.startswith(ids[0]) and older.startswith(ids[1])
    assert ids[0] > ids[1]


def test_runs_limit_shows_only_the_newest_n(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": PASSING})
    for _ in range(3):
        ci_run(repo)
    ids = [run["id"] for run in runs_json(repo)]
    assert len(ids) == 3
    result = quire("ci", "runs", "--repo", str(repo), "--limit", "2")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ids[:2]
    short = quire("ci", "runs", "--repo", str(repo), "-n", "1", "--json")
    assert [run["id"] for run in json.loads(short.stdout)] == ids[:1]


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_runs_rejects_a_limit_below_one_as_bad_input(tmp_path: Path, limit: str) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": PASSING})
    ci_run(repo)
    ci_run(repo)
    result = quire("ci", "runs", "--repo", str(repo), "--limit", limit)
    assert result.exit_code == 2, result.output
    assert "--limit" in result.stderr


def test_runs_all_lists_every_repositorys_runs_with_the_repository_and_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a database, --all reads this state directory's repositories; no worker column
    (the runs are this machine's own)."""
    one, two = tmp_path / "one", tmp_path / "two"
    make_repo(one, {".quire/ci.py": PASSING})
    make_repo(two, {".quire/ci.py": PASSING})
    ci_run(one)
    ci_run(two)
    monkeypatch.chdir(tmp_path)  # not a repository: --all needs none
    result = quire("ci", "runs", "--all")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "repo",
        "state",
        "revision",
        "executor",
        "trigger",
        "started",
        "duration",
    ]
    ids = {
        run["id"]: name for name, repo in (("one", one), ("two", two)) for run in runs_json(repo)
    }
    assert len(lines) == 3 and len(ids) == 2
    for line in lines[1:]:
        run_id, repo = line.split()[:2]
        assert repo.startswith(ids[run_id] + "-")
    listed = json.loads(quire("ci", "runs", "--all", "--json").stdout)
    assert [(r["id"], r["worker"]) for r in listed] == [
        (i, None) for i in sorted(ids, reverse=True)
    ]


def test_runs_json_parses_and_has_the_documented_keys(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    sha = make_repo(repo, {".quire/ci.py": PASSING})
    ci_run(repo)
    commit(repo, {".quire/ci.py": THREE_JOBS})
    ci_run(repo)
    runs = runs_json(repo)
    assert len(runs) == 2
    documented = {
        "id",
        "state",
        "reason",
        "revision",
        "sha",
        "ref",
        "executor",
        "started_at",
        "finished_at",
        "duration_s",
    }
    for run in runs:
        assert documented <= set(run), run
        assert run["revision"] == "HEAD"
        assert run["ref"] == "refs/heads/main"
        assert run["executor"] == "host"
        started = datetime.fromisoformat(run["started_at"])
        finished = datetime.fromisoformat(run["finished_at"])
        assert started <= finished
        assert run["duration_s"] == pytest.approx((finished - started).total_seconds(), abs=0.002)
    failed, complete = runs
    assert (failed["state"], failed["reason"]) == ("failed", "jobs-failed")
    assert (complete["state"], complete["reason"]) == ("complete", None)
    assert complete["sha"] == sha
    assert failed["sha"] != sha


def test_runs_says_so_when_there_are_none(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": PASSING})
    result = quire("ci", "runs", "--repo", str(repo))
    assert (result.exit_code, result.stdout) == (0, "no runs yet\n")
    as_json = quire("ci", "runs", "--repo", str(repo), "--json")
    assert json.loads(as_json.stdout) == []


def test_runs_outside_a_repository_exits_2(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    result = quire("ci", "runs", "--repo", str(tmp_path / "plain"))
    assert result.exit_code == 2
    assert "is not a git repository" in result.stderr


# --- show -----------------------------------------------------------------------------------------


def test_show_prints_the_run_and_each_jobs_status_error_and_outputs(three_jobs: Path) -> None:
    run = runs_json(three_jobs)[0]
    result = quire("ci", "show", "--repo", str(three_jobs))
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert f"run       {run['id']}" in lines
    assert "state     failed (jobs-failed)" in lines
    assert f"revision  HEAD {run['sha']} (refs/heads/main)" in lines
    assert "executor  host" in lines
    assert "error     failed: second" in lines
    assert any(line.startswith("records   ") and run["id"] in line for line in lines)
    assert out.index("first: success") < out.index("second: failed") < out.index("third: skipped")
    assert "    answer = 42" in lines
    assert '    words = ["a", "b"]' in lines
    assert "    command `echo two from second; exit 3` exited 3" in lines
    assert "    input 'second' failed" in lines


def test_show_prints_a_pushed_runs_sha_once(three_jobs: Path) -> None:
    from tests.helpers import git

    sha = git(three_jobs, "rev-parse", "HEAD").strip()
    pushed = quire("ci", "run", "--rev", sha, "--ref", "refs/heads/main", "--repo", str(three_jobs))
    assert pushed.exit_code == 1, pushed.output
    result = quire("ci", "show", "--repo", str(three_jobs))
    assert f"revision  {sha} (refs/heads/main)" in result.stdout.splitlines()
    assert result.stdout.count(sha) == 1


def test_show_json_has_jobs_with_status_times_error_and_outputs(three_jobs: Path) -> None:
    run_id = runs_json(three_jobs)[0]["id"]
    result = quire("ci", "show", run_id, "--repo", str(three_jobs), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["id"] == run_id
    assert (info["state"], info["reason"], info["exit_code"]) == ("failed", "jobs-failed", 1)
    assert info["error"] == "failed: second"
    assert info["container"] is None
    assert Path(info["path"]).is_dir()
    jobs = {job["job_id"]: job for job in info["jobs"]}
    assert [job["job_id"] for job in info["jobs"]] == ["first", "second", "third"]
    assert jobs["first"]["status"] == "success"
    assert jobs["first"]["outputs"] == {"answer": 42, "words": ["a", "b"]}
    assert jobs["first"]["error"] is None
    assert jobs["second"]["status"] == "failed"
    assert jobs["second"]["error"] == "command `echo two from second; exit 3` exited 3"
    assert jobs["third"]["status"] == "skipped"
    assert jobs["third"]["skip_reason"] == "input 'second' failed"
    for name in ("first", "second"):
        started = datetime.fromisoformat(jobs[name]["started_at"])
        finished = datetime.fromisoformat(jobs[name]["finished_at"])
        assert started <= finished
        assert jobs[name]["duration_s"] >= 0
    assert jobs["third"]["started_at"] is None


def test_show_never_prints_a_configured_secret(tmp_path: Path) -> None:
    value = "s3cr3t-value-for-show"
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[secrets]\ntoken = "{value}"\n')
    ci = """
    from quire.ci import job

    @job(inputs=["quire/push"])
    def leaky(rt):
        token = rt.secret("token")
        return {"token": token, "nested": {"list": ["x " + token]}}

    @job(inputs=["quire/push"])
    def raising(rt):
        raise RuntimeError("bad token " + rt.secret("token"))
    """
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": ci})
    ci_run(repo)
    text = quire("ci", "show", "--repo", str(repo))
    as_json = quire("ci", "show", "--repo", str(repo), "--json")
    for result in (text, as_json):
        assert result.exit_code == 0, result.output
        assert value not in result.output
    jobs = {job["job_id"]: job for job in json.loads(as_json.stdout)["jobs"]}
    assert jobs["leaky"]["outputs"] == {"token": "***", "nested": {"list": ["x ***"]}}
    assert "bad token ***" in jobs["raising"]["error"]
    assert "bad token ***" in text.stdout


# --- logs -----------------------------------------------------------------------------------------


def test_logs_latest_reproduces_the_jobs_output_bytes_exactly(tmp_path: Path) -> None:
    repo = emit_repo(tmp_path)
    live = ci_run(repo)
    result = quire("ci", "logs", "latest", "--split-streams", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == emit_header() + PAYLOAD
    assert result.stderr_bytes == ERR_PAYLOAD
    # What `ci run` showed live, minus its run header and closing summary.
    assert emit_header() + PAYLOAD in live.stdout_bytes
    assert live.stderr_bytes == ERR_PAYLOAD


def test_logs_writes_both_streams_to_stdout_in_the_order_they_came(tmp_path: Path) -> None:
    """`quire ci logs latest tests | grep FAIL` must find what a runner wrote to stderr."""
    ci = """
import sys
from quire.ci import job

@job(inputs=["quire/push"])
def tests(rt):
    rt.sh("echo first out; echo FAIL on err >&2; echo last out")
"""
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": ci})
    ci_run(repo)
    result = quire("ci", "logs", "latest", "tests", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    shown = result.stdout
    assert shown.index("first out") < shown.index("FAIL on err") < shown.index("last out")
    assert result.stderr_bytes == b""


def test_logs_of_one_job_of_a_run_named_by_unique_prefix_shows_only_that_job(
    three_jobs: Path,
) -> None:
    ci_run(three_jobs)
    newer, older = (run["id"] for run in runs_json(three_jobs))
    prefix = older[: len(common_prefix([newer, older])) + 1]
    for ref in (older, prefix):
        result = quire("ci", "logs", ref, "second", "--repo", str(three_jobs))
        assert result.exit_code == 0, result.output
        assert re.fullmatch(
            rb"==> second\n\$ echo two from second; exit 3\ntwo from second\n"
            rb"\(exit 3 after \d+\.\d\ds\)\n",
            result.stdout_bytes,
        ), result.stdout_bytes


def test_logs_of_a_whole_run_shows_jobs_in_the_order_they_ran(three_jobs: Path) -> None:
    result = quire("ci", "logs", "--repo", str(three_jobs))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("==> first") < out.index("one from first") < out.index("==> second")
    assert out.index("==> second") < out.index("two from second")
    assert "==> third" not in out  # skipped before it started: no output to show


def test_logs_of_an_unknown_job_exits_2_naming_it(three_jobs: Path) -> None:
    result = quire("ci", "logs", "latest", "nope", "--repo", str(three_jobs))
    assert result.exit_code == 2
    assert "no job 'nope'" in result.stderr
    assert result.stdout == ""


def test_logs_follow_of_a_finished_run_with_an_unknown_job_exits_2(three_jobs: Path) -> None:
    result = quire("ci", "logs", "latest", "nope", "--follow", "--repo", str(three_jobs))
    assert result.exit_code == 2
    assert "no job 'nope'" in result.stderr


@pytest.mark.parametrize("command", ["logs", "show"])
def test_an_unknown_run_exits_2_naming_it(three_jobs: Path, command: str) -> None:
    result = quire("ci", command, "19990101-nothing", "--repo", str(three_jobs))
    assert result.exit_code == 2
    assert "error: no run '19990101-nothing'" in result.stderr


@pytest.mark.parametrize("command", ["logs", "show"])
def test_an_ambiguous_run_prefix_exits_2_listing_the_candidates(
    three_jobs: Path, command: str
) -> None:
    ci_run(three_jobs)
    ids = [run["id"] for run in runs_json(three_jobs)]
    prefix = common_prefix(ids)
    assert prefix
    result = quire("ci", command, prefix, "--repo", str(three_jobs))
    assert result.exit_code == 2
    assert f"run prefix {prefix!r} is ambiguous" in result.stderr
    assert all(run_id in result.stderr for run_id in ids)


@pytest.mark.parametrize("command", ["logs", "show"])
def test_latest_without_any_run_exits_2(tmp_path: Path, command: str) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": PASSING})
    result = quire("ci", command, "latest", "--repo", str(repo))
    assert result.exit_code == 2
    assert "no runs yet" in result.stderr


def torn_job_log(repo: Path, job: str) -> Path:
    """Append half a line to `job`'s log, as a crash mid-write leaves it."""
    run_id = runs_json(repo)[0]["id"]
    matches = list(Path(os.environ["QUIRE_STATE_DIR"]).glob(f"runs/*/*/{run_id}/jobs/{job}"))
    assert len(matches) == 1
    log = matches[0] / "log.jsonl"
    with open(log, "ab") as handle:
        handle.write(b'{"t": "2026-01-01T00:00:00.000Z", "event": "stdout", "data": "lost')
    return log


def test_logs_tolerates_a_torn_last_line_and_says_so(tmp_path: Path) -> None:
    repo = emit_repo(tmp_path)
    ci_run(repo)
    log = torn_job_log(repo, "emit")
    result = quire("ci", "logs", "latest", "--split-streams", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.startswith(emit_header() + PAYLOAD)
    assert b"lost" not in result.stdout_bytes
    assert result.stderr_bytes.startswith(ERR_PAYLOAD)
    note = result.stdout + result.stderr
    assert f"{log}: the last line is incomplete" in note


def run_in_thread(*args: str, timeout: float) -> Result:
    """`quire(*args)` that must return within `timeout` seconds."""
    box: list[Result] = []
    thread = threading.Thread(target=lambda: box.append(quire(*args)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"quire {' '.join(args)} did not return in {timeout}s"
    return box[0]


def test_logs_follow_of_a_finished_run_prints_everything_and_returns(tmp_path: Path) -> None:
    repo = emit_repo(tmp_path)
    ci_run(repo)
    result = run_in_thread(
        "ci", "logs", "latest", "--follow", "--split-streams", "--repo", str(repo), timeout=15
    )
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.startswith(emit_header() + PAYLOAD)
    assert result.stderr_bytes == ERR_PAYLOAD
    # It ends as the run did: the summary and the outcome, on lines of their own.
    tail = result.stdout_bytes[len(emit_header() + PAYLOAD) :].decode()
    assert tail.startswith("\n"), tail
    assert re.search(r"^emit +success ", tail, re.M), tail
    assert re.search(r"^run complete in \d+\.\d\ds: .*/complete/", tail, re.M), tail


def test_logs_follow_exits_with_the_runs_exit_code_after_its_outcome(three_jobs: Path) -> None:
    ci_run(three_jobs)
    result = run_in_thread(
        "ci", "logs", "latest", "--follow", "--repo", str(three_jobs), timeout=15
    )
    assert result.exit_code == 1, result.output
    assert re.search(r"^third +skipped +- +input 'second' failed", result.stdout, re.M)
    assert "run failed (jobs-failed) in " in result.stdout


def test_logs_follow_of_a_finished_run_notes_a_torn_last_line(tmp_path: Path) -> None:
    repo = emit_repo(tmp_path)
    ci_run(repo)
    log = torn_job_log(repo, "emit")
    result = run_in_thread("ci", "logs", "latest", "--follow", "--repo", str(repo), timeout=15)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.startswith(emit_header() + PAYLOAD)
    assert f"{log}: the last line is incomplete" in result.stdout + result.stderr


# --- which repository a run belongs to ------------------------------------------------------------


def test_two_repositories_whose_folders_share_a_name_keep_their_own_history(
    tmp_path: Path,
) -> None:
    one, two = tmp_path / "a" / "proj", tmp_path / "b" / "proj"
    make_repo(one, {".quire/ci.py": THREE_JOBS})
    make_repo(two, {".quire/ci.py": THREE_JOBS.replace("one from first", "from b")})
    ci_run(one)
    ci_run(two)
    shown = {repo: quire("ci", "show", "latest", "--repo", str(repo)) for repo in (one, two)}
    ids = {
        repo: json.loads(quire("ci", "runs", "--json", "--repo", str(repo)).stdout)
        for repo in (one, two)
    }
    assert len(ids[one]) == len(ids[two]) == 1
    assert ids[one][0]["id"] != ids[two][0]["id"]
    assert ids[one][0]["id"] in shown[one].stdout
    assert ids[two][0]["id"] not in shown[one].stdout
    logs = quire("ci", "logs", "latest", "first", "--repo", str(one))
    assert "one from first" in logs.stdout and "from b" not in logs.stdout


def test_runs_an_older_version_recorded_under_the_folder_name_are_adopted(
    tmp_path: Path,
) -> None:
    from quire.ci.store.records import RunMeta, write_record
    from quire.paths import state_dir

    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": THREE_JOBS})
    other = tmp_path / "elsewhere" / "proj"
    make_repo(other, {".quire/ci.py": THREE_JOBS})
    ci_run(repo)
    (recorded,) = runs_json(repo)
    # Move it where an older version kept it, beside a run of the other `proj`.
    new_root = store_for(repo).root
    legacy = state_dir() / "runs" / "proj"
    (legacy / "failed").mkdir(parents=True)
    (new_root / "failed" / recorded["id"]).rename(legacy / "failed" / recorded["id"])
    (new_root / "latest").unlink()
    foreign = legacy / "complete" / "20200101-000000-000000-aaaaaa"
    foreign.mkdir(parents=True)
    meta = (legacy / "failed" / recorded["id"] / "meta.yml").read_text()
    write_record(
        foreign / "meta.yml",
        RunMeta.model_validate({**yaml.safe_load(meta), "git_dir": str(other / ".git")}),
    )
    assert runs_json(repo) == [recorded]  # adopted on first use, with its latest link
    assert quire("ci", "show", "latest", "--repo", str(repo)).exit_code == 0
    assert foreign.is_dir()  # the other repository's run stays where it was
    assert not (legacy / "failed" / recorded["id"]).exists()


def test_logs_follow_of_a_run_whose_runner_died_says_so_and_exits_3(tmp_path: Path) -> None:
    import socket
    import subprocess

    from quire.ci.store.records import RunnerInfo

    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": THREE_JOBS})
    ci_run(repo)
    store = store_for(repo)
    meta = store.find("latest").meta()
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = store.create(
        lambda run_id: meta.model_copy(update={"run_id": run_id}),
        RunnerInfo(pid=dead.pid, host=socket.gethostname(), pid_start=1),
    )
    killed.transition(RunState.active)
    (killed.job_dir("first") / "log.jsonl").write_text(
        '{"t": "2026-01-01T00:00:00.000Z", "event": "stdout", "data": "half done\\n"}\n'
    )
    result = run_in_thread("ci", "logs", killed.run_id, "--follow", "--repo", str(repo), timeout=15)
    assert result.exit_code == 3, result.output
    assert "half done" in result.stdout
    assert f"run {killed.run_id} has no runner any more" in result.stderr
    assert "quire ci reconcile" in result.stderr


def test_show_lists_a_job_with_a_corrupt_state_as_unreadable_and_warns(three_jobs: Path) -> None:
    run = store_for(three_jobs).find("latest")
    (run.path / "jobs" / "second" / "state.yml").write_text("status: [not, a, state\n")
    result = quire("ci", "show", "latest", "--repo", str(three_jobs))
    assert result.exit_code == 0, result.output
    assert "second: unreadable" in result.stdout
    assert "warning: some records of run" in result.stderr and "job second" in result.stderr
    data = json.loads(quire("ci", "show", "latest", "--json", "--repo", str(three_jobs)).stdout)
    assert {job["job_id"]: job["status"] for job in data["jobs"]}["second"] == "unreadable"


def test_runs_shows_a_pushed_runs_ref_rather_than_its_sha_twice(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    sha = make_repo(repo, {".quire/ci.py": THREE_JOBS})
    result = quire("ci", "run", "--rev", sha, "--ref", "refs/heads/main", "--repo", str(repo))
    assert result.exit_code == 1, result.output
    listed = quire("ci", "runs", "--repo", str(repo)).stdout.splitlines()[1]
    assert f"refs/heads/main {sha[:12]}" in listed
    assert sha not in listed


def test_runs_and_show_tell_how_a_run_was_started(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": PASSING})
    trigger = '{"kind": "manual", "by": "alice"}'
    done = quire("ci", "run", "--repo", str(repo), "--trigger", trigger)
    assert done.exit_code == 0, done.output
    (line,) = quire("ci", "runs", "--repo", str(repo)).stdout.splitlines()[1:]
    assert " by-hand " in line
    assert "trigger   by hand by alice" in quire("ci", "show", "--repo", str(repo)).stdout
    assert runs_json(repo)[0]["trigger"]["kind"] == "manual"
    bad = quire("ci", "run", "--repo", str(repo), "--trigger", '{"kind": "cosmic"}')
    assert bad.exit_code == 2 and "--trigger" in bad.output
