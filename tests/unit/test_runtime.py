"""The Runtime a job gets, on a HostExecutor in a tmp workspace with a real job log."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from plumbum import local

from quire.ci.pipeline import Pipeline, load_pipeline
from quire.ci.run.artifacts import ArtifactKeeper, Budget
from quire.ci.run.jobhost import ArtifactRequest, LogLine, Named, Out, ShRequest, parse
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from quire.ci.run.runtime import JobContext, JobServer
from quire.ci.store.eventlog import JsonLogs
from quire.ci.store.logs import event_bytes
from quire.ci.vocabulary import ArtifactFile
from quire.config import Secrets
from quire.errors import (
    ArtifactRefused,
    BadCommand,
    CommandFailed,
    CommandTimedOut,
    JobAccessError,
    JobTimedOut,
    UnknownSecret,
)
from quire.jobhost.protocol import Message
from quire.jobhost.runtime import JobLink, Runtime, unless_error
from tests.helpers import host_executor

GRAPH = """
from quire.ci import job

@job(inputs=["quire/push"])
def a(rt):
    pass

@job(inputs=["a"])
def b(rt):
    pass

@job(inputs=["b"])
def c(rt):
    pass

@job(inputs=["quire/push"])
def other(rt):
    pass

@job(inputs=["quire/push"], timeout=0.2)
def slow(rt):
    pass
"""

PUSH = {"sha": "a" * 40, "ref": "refs/heads/main", "branch": "main", "tag": None}


class ServedLink(JobLink):
    """The job side's link answered in this process by quire's side (`JobServer`), each
    message through JSON as on the wire: both halves of the runtime, without a socket."""

    def __init__(self, server: JobServer) -> None:  # no channel: nothing is sent
        self._server = server
        self._owner = os.getpid()

    def tell(self, message: Message) -> None:
        parsed = parse(json.loads(json.dumps(message)))
        if isinstance(parsed, Out):
            self._server.output(parsed.stream, parsed.data)
        elif isinstance(parsed, LogLine):
            self._server.log(parsed.message)

    def ask(self, message: Message) -> Message:
        parsed = parse(json.loads(json.dumps(message)))
        assert isinstance(parsed, ShRequest | Named | ArtifactRequest)
        return unless_error(json.loads(json.dumps(self._server.handle(parsed))))


@dataclass
class Harness:
    """Runtimes of one run whose outlet writes the run's JSON Lines logs under `run_path`."""

    workspace: Path
    run_path: Path
    pipeline: Pipeline
    outlet: RunOutlet
    job: str = "c"

    @property
    def log_path(self) -> Path:
        """The log of the job the last runtime was made for."""
        return self.run_path / "jobs" / self.job / "log.jsonl"

    def runtime(
        self,
        job_id: str = "c",
        *,
        outputs: Mapping[str, Mapping[str, Any]] | None = None,
        secrets: Mapping[str, str] | None = None,
        capture_limit: int = 1024 * 1024,
        deadline: float | None = None,
        keeper: ArtifactKeeper | None = None,
        kept: list[ArtifactFile] | None = None,
    ) -> Runtime:
        values = dict(secrets or {})
        self.job = job_id
        ctx = JobContext(
            job=self.pipeline.jobs[job_id],
            pipeline=self.pipeline,
            executor=host_executor(self.workspace, self.outlet),  # type: ignore[arg-type]
            outputs=outputs if outputs is not None else {"quire/push": PUSH},
            secrets=Secrets(values=values),
            outlet=self.outlet,
            capture_limit=capture_limit,
            deadline=deadline,
            keeper=keeper,
            kept=kept if kept is not None else [],
        )
        return Runtime(ServedLink(JobServer(ctx)), job_id)

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():  # nothing was ever logged for the job
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def output_bytes(self, stream: str) -> bytes:
        return b"".join(event_bytes(e) for e in self.events() if e["event"] == stream)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    run_path = tmp_path / "run"
    run_path.mkdir()
    outlet = RunOutlet(Redactor(), [JsonLogs(lambda: run_path)])
    try:
        yield Harness(workspace, run_path, load_pipeline(GRAPH), outlet)
    finally:
        outlet.close()


def test_argv_command_runs_without_a_shell(harness: Harness) -> None:
    out = harness.runtime().sh(["echo", "$HOME", "two words"])
    assert out.exit == 0
    assert out.stdout == "$HOME two words\n"
    assert out.stderr == ""
    assert out.cmd == ["echo", "$HOME", "two words"]


def test_argv_tuple_is_accepted_and_reported_as_a_list(harness: Harness) -> None:
    out = harness.runtime().sh(("echo", "hi"))
    assert out.stdout == "hi\n"
    assert out.cmd == ["echo", "hi"]


def test_string_command_runs_with_sh(harness: Harness) -> None:
    out = harness.runtime().sh("echo $((40 + 2)) | tr 4 X; echo err >&2; exit 3")
    assert out.exit == 3
    assert out.stdout == "X2\n"
    assert out.stderr == "err\n"
    assert out.cmd == "echo $((40 + 2)) | tr 4 X; echo err >&2; exit 3"


def test_commands_run_in_the_workspace(harness: Harness) -> None:
    (harness.workspace / "marker.txt").write_text("here\n")
    out = harness.runtime().sh(["cat", "marker.txt"])
    assert out.stdout == "here\n"
    assert harness.runtime().sh("pwd").stdout.strip() == str(harness.workspace)


def test_sh_output_carries_timing(harness: Harness) -> None:
    out = harness.runtime().sh("sleep 0.1")
    assert out.duration_s >= 0.1
    assert out.started_at.utcoffset() is not None


def test_env_adds_to_the_environment_and_path_still_works(harness: Harness) -> None:
    out = harness.runtime().sh(
        'echo "$ADDED"; echo "$QUIRE_STATE_DIR"; printenv ADDED', env={"ADDED": "extra value"}
    )
    assert out.exit == 0
    added, inherited, printed = out.stdout.splitlines()
    assert added == "extra value"
    assert inherited == local.env["QUIRE_STATE_DIR"]
    assert printed == "extra value"


def test_env_with_argv_finds_bare_programs_on_path(harness: Harness) -> None:
    out = harness.runtime().sh(["printenv", "ADDED"], env={"ADDED": "1"})
    assert (out.exit, out.stdout) == (0, "1\n")


def test_env_names_but_not_values_are_logged(harness: Harness) -> None:
    harness.runtime().sh(["true"], env={"TOKEN": "value-in-env"})
    start = next(e for e in harness.events() if e["event"] == "sh-start")
    assert start["env"] == ["TOKEN"]
    assert "value-in-env" not in harness.log_path.read_text()


def test_check_true_raises_command_failed_naming_the_command(harness: Harness) -> None:
    with pytest.raises(CommandFailed) as caught:
        harness.runtime().sh("exit 4", check=True)
    assert "`exit 4` exited 4" in str(caught.value)


def test_non_zero_exit_is_returned_without_check(harness: Harness) -> None:
    assert harness.runtime().sh(["false"]).exit == 1


def test_check_true_passes_on_success(harness: Harness) -> None:
    assert harness.runtime().sh(["true"], check=True).exit == 0


def test_non_utf8_output_is_replaced_in_sh_output_and_base64_in_the_log(
    harness: Harness,
) -> None:
    out = harness.runtime().sh(["printf", "ok \\377\\376 end"])
    assert out.stdout == "ok \ufffd\ufffd end"
    stdout_events = [e for e in harness.events() if e["event"] == "stdout"]
    assert stdout_events
    assert any(e.get("encoding") == "base64" for e in stdout_events)
    assert harness.output_bytes("stdout") == b"ok \xff\xfe end"


def test_utf8_output_is_text_in_the_log(harness: Harness) -> None:
    harness.runtime().sh(["printf", "h\\303\\251llo \\342\\234\\223"])
    stdout_events = [e for e in harness.events() if e["event"] == "stdout"]
    assert [e.get("encoding") for e in stdout_events] == [None]
    assert "".join(e["data"] for e in stdout_events) == "héllo ✓"


def test_log_records_start_output_and_exit_in_order(harness: Harness) -> None:
    harness.runtime().sh("echo out; echo err >&2; exit 2")
    events = harness.events()
    names = [e["event"] for e in events]
    assert names[0] == "sh-start"
    assert names[-1] == "sh-exit"
    assert sorted(names[1:-1]) == ["stderr", "stdout"]
    assert events[0]["cmd"] == "echo out; echo err >&2; exit 2"
    assert events[-1]["exit"] == 2
    assert all(e["t"].endswith("Z") for e in events)


def test_signal_killed_command_has_a_negative_exit(harness: Harness) -> None:
    out = harness.runtime().sh("kill -KILL $$")
    assert out.exit == -9


def test_signal_killed_command_with_check_raises(harness: Harness) -> None:
    with pytest.raises(CommandFailed, match="exited -15"):
        harness.runtime().sh("kill -TERM $$", check=True)


def test_unknown_program_gives_exit_127_with_the_reason_in_stderr(harness: Harness) -> None:
    out = harness.runtime().sh(["no-such-program-quire", "arg"])
    assert out.exit == 127
    assert "no-such-program-quire" in out.stderr
    assert "not found" in out.stderr
    assert "not found" in harness.output_bytes("stderr").decode()


def test_unknown_program_with_check_fails_the_job(harness: Harness) -> None:
    with pytest.raises(CommandFailed, match="exited 127"):
        harness.runtime().sh(["no-such-program-quire"], check=True)


def test_relative_script_resolves_against_the_workspace_not_the_cwd(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = harness.workspace / "build.sh"
    script.write_text("#!/bin/sh\necho from-workspace\n")
    script.chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    decoy = elsewhere / "build.sh"
    decoy.write_text("#!/bin/sh\necho from-cwd\n")
    decoy.chmod(0o755)
    monkeypatch.chdir(elsewhere)
    with local.cwd(elsewhere):
        out = harness.runtime().sh(["./build.sh"])
    assert (out.exit, out.stdout) == (0, "from-workspace\n")


def test_relative_path_with_a_directory_resolves_against_the_workspace(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = harness.workspace / "tools" / "run"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\necho tool "$@"\n')
    tool.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    out = harness.runtime().sh(["tools/run", "x"])
    assert (out.exit, out.stdout) == (0, "tool x\n")


def test_relative_script_missing_from_the_workspace_gives_127(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy = tmp_path / "only-in-cwd.sh"
    decoy.write_text("#!/bin/sh\necho wrong\n")
    decoy.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    out = harness.runtime().sh(["./only-in-cwd.sh"])
    assert out.exit == 127
    assert "only-in-cwd.sh" in out.stderr
    assert "wrong" not in out.stdout


def test_executable_without_shebang_is_a_failed_command_not_a_crash(harness: Harness) -> None:
    script = harness.workspace / "no-shebang.sh"
    script.write_text("echo no shebang\n")
    script.chmod(0o755)
    out = harness.runtime().sh(["./no-shebang.sh"])
    assert out.exit == 127
    assert "Exec format error" in out.stderr


def test_script_with_a_missing_interpreter_gives_127(harness: Harness) -> None:
    script = harness.workspace / "bad-interp.sh"
    script.write_text("#!/nonexistent/interpreter\necho x\n")
    script.chmod(0o755)
    out = harness.runtime().sh(["./bad-interp.sh"])
    assert out.exit == 127
    assert "bad-interp.sh" in out.stderr


def test_non_executable_script_gives_127_with_the_reason(harness: Harness) -> None:
    (harness.workspace / "plain.sh").write_text("#!/bin/sh\necho hi\n")
    out = harness.runtime().sh(["./plain.sh"])
    assert out.exit == 127
    assert "not executable" in out.stderr


@pytest.mark.parametrize(
    "cmd",
    [42, None, [], "", "   ", ["echo", 1], [b"echo"], {"echo": "hi"}, b"echo hi"],
    ids=[
        "int",
        "none",
        "empty-list",
        "empty-str",
        "blank-str",
        "int-arg",
        "bytes-arg",
        "dict",
        "bytes",
    ],
)
def test_bad_command_types_raise_bad_command_naming_the_job(harness: Harness, cmd: object) -> None:
    with pytest.raises(BadCommand) as caught:
        harness.runtime("b").sh(cmd)  # type: ignore[arg-type]
    assert "job 'b'" in str(caught.value)
    assert harness.events() == []


def test_bad_env_raises_bad_command_naming_the_job(harness: Harness) -> None:
    with pytest.raises(BadCommand, match="job 'b'"):
        harness.runtime("b").sh(["true"], env={"N": 1})  # type: ignore[dict-item]


def test_jobs_gives_a_direct_inputs_outputs(harness: Harness) -> None:
    rt = harness.runtime("b", outputs={"quire/push": PUSH, "a": {"version": "1.2"}})
    assert rt.jobs("a") == {"version": "1.2"}


def test_jobs_gives_a_transitive_ancestors_outputs(harness: Harness) -> None:
    rt = harness.runtime("c", outputs={"quire/push": PUSH, "a": {"x": 1}, "b": {"y": 2}})
    assert rt.jobs("a") == {"x": 1}
    assert rt.jobs("b") == {"y": 2}


def test_jobs_gives_the_push_source_to_any_job(harness: Harness) -> None:
    assert harness.runtime("c").jobs("quire/push") == PUSH
    assert harness.runtime("other").jobs("quire/push") == PUSH


def test_jobs_refuses_the_job_itself(harness: Harness) -> None:
    with pytest.raises(JobAccessError) as caught:
        harness.runtime("b").jobs("b")
    assert "'b'" in str(caught.value)
    assert "own outputs" in str(caught.value)


def test_jobs_refuses_a_non_ancestor_naming_both_jobs(harness: Harness) -> None:
    rt = harness.runtime("c", outputs={"quire/push": PUSH, "other": {"secret": "no"}})
    with pytest.raises(JobAccessError) as caught:
        rt.jobs("other")
    assert "'c'" in str(caught.value)
    assert "'other'" in str(caught.value)


def test_jobs_refuses_a_descendant(harness: Harness) -> None:
    with pytest.raises(JobAccessError, match=r"'a'.*'c'"):
        harness.runtime("a").jobs("c")


def test_jobs_refuses_an_unknown_name(harness: Harness) -> None:
    with pytest.raises(JobAccessError, match="'nope'"):
        harness.runtime("c").jobs("nope")


def test_secret_returns_the_configured_value(harness: Harness) -> None:
    rt = harness.runtime(secrets={"token": "s3cr3t-value"})
    assert rt.secret("token") == "s3cr3t-value"


def test_unknown_secret_lists_names_never_values(harness: Harness) -> None:
    rt = harness.runtime(secrets={"github_token": "ghp_topsecret", "pypi": "pypi-hidden"})
    with pytest.raises(UnknownSecret) as caught:
        rt.secret("gitub_token")
    message = str(caught.value)
    assert "'gitub_token'" in message
    assert "github_token" in message
    assert "pypi" in message
    assert "ghp_topsecret" not in message
    assert "pypi-hidden" not in message


def test_secret_value_is_redacted_from_the_log(harness: Harness) -> None:
    rt = harness.runtime(secrets={"token": "s3cr3t-value"})
    value = rt.secret("token")
    out = rt.sh(["echo", "token is", value])
    text = harness.log_path.read_text()
    assert "s3cr3t-value" not in text
    assert "***" in text
    # The job itself still gets the real output.
    assert out.stdout == "token is s3cr3t-value\n"


def test_capture_cap_keeps_the_end_and_sets_truncated(harness: Harness) -> None:
    rt = harness.runtime(capture_limit=1024)
    out = rt.sh("head -c 5000 /dev/zero | tr '\\000' x; echo; echo THE-END; echo small >&2")
    assert out.stdout.endswith("x\nTHE-END\n")
    assert len(out.stdout.encode()) == 1024
    assert out.stdout_truncated
    assert out.stderr == "small\n"
    assert not out.stderr_truncated
    # The log keeps everything.
    assert len(harness.output_bytes("stdout")) == 5000 + 1 + len("THE-END\n")


def test_output_within_the_cap_is_not_truncated(harness: Harness) -> None:
    out = harness.runtime(capture_limit=1024).sh("head -c 1024 /dev/zero | tr '\\000' y")
    assert out.stdout == "y" * 1024
    assert not out.stdout_truncated


def test_command_timeout_raises_command_timed_out(harness: Harness) -> None:
    with pytest.raises(CommandTimedOut) as caught:
        harness.runtime().sh("sleep 10", timeout=0.2)
    assert "`sleep 10`" in str(caught.value)
    assert "0.2s" in str(caught.value)
    exits = [e for e in harness.events() if e["event"] == "sh-exit"]
    assert exits and exits[0]["exit"] < 0
    assert exits[0]["duration_s"] < 5


def test_command_within_its_timeout_succeeds(harness: Harness) -> None:
    assert harness.runtime().sh(["true"], timeout=5).exit == 0


def test_job_timeout_stops_a_command_with_job_timed_out(harness: Harness) -> None:
    rt = harness.runtime("slow", deadline=time.monotonic() + 0.2)
    started = time.monotonic()
    with pytest.raises(JobTimedOut) as caught:
        rt.sh("sleep 10", timeout=30)
    assert time.monotonic() - started < 5
    assert "job 'slow'" in str(caught.value)
    assert "timeout of 0.2s" in str(caught.value)


def test_secret_written_in_two_pieces_is_still_redacted_in_the_log(harness: Harness) -> None:
    rt = harness.runtime(secrets={"token": "token-value-123"})
    rt.secret("token")
    out = rt.sh("printf 'auth: token-va'; sleep 0.05; printf 'lue-123 done\\n'")
    stdout_events = [e for e in harness.events() if e["event"] == "stdout"]
    assert len(stdout_events) >= 2, "the command's output should arrive in two reads"
    assert harness.output_bytes("stdout") == b"auth: *** done\n"
    assert all("token-va" not in e["data"] for e in stdout_events)
    assert out.stdout == "auth: token-value-123 done\n"


def test_character_written_in_two_pieces_stays_text_in_the_log(harness: Harness) -> None:
    harness.runtime().sh("printf 'caf\\303'; sleep 0.05; printf '\\251\\n'")
    stdout_events = [e for e in harness.events() if e["event"] == "stdout"]
    assert all("encoding" not in e for e in stdout_events)
    assert "".join(e["data"] for e in stdout_events) == "café\n"


def test_bytes_held_at_the_end_of_output_reach_the_log(harness: Harness) -> None:
    rt = harness.runtime(secrets={"token": "token-value-123"})
    rt.secret("token")
    rt.sh("printf 'ends with token-val'")
    assert harness.output_bytes("stdout") == b"ends with token-val"


def test_secret_with_a_quote_in_an_argv_is_redacted_from_sh_start(harness: Harness) -> None:
    rt = harness.runtime(secrets={"password": "it's-s3cret"})
    value = rt.secret("password")
    rt.sh(["true", value])
    start = next(e for e in harness.events() if e["event"] == "sh-start")
    assert "s3cret" not in start["cmd"]


def test_rt_artifact_asks_quire_which_copies_records_and_logs_it(
    harness: Harness, tmp_path: Path
) -> None:
    (harness.workspace / "report.txt").write_text("all green\n")
    kept: list[ArtifactFile] = []
    run_path = tmp_path / "run"
    rt = harness.runtime("a", keeper=ArtifactKeeper(lambda: run_path, Budget(1 << 20)), kept=kept)
    assert rt.artifact("report.txt") == "report.txt"
    assert [(f.name, f.size) for f in kept] == [("report.txt", 10)]
    assert (run_path / "artifacts" / "a" / "report.txt").read_text() == "all green\n"
    messages = [e["text"] for e in harness.events() if e["event"] == "message"]
    assert messages == ["artifact report.txt: 1 file(s), 10 B"]


def test_rt_artifact_refusals_are_raised_in_the_job_as_artifact_refused(
    harness: Harness, tmp_path: Path
) -> None:
    rt = harness.runtime("a", keeper=ArtifactKeeper(lambda: tmp_path / "run", Budget(1 << 20)))
    with pytest.raises(ArtifactRefused, match=r"job 'a'.*leads out of the workspace"):
        rt.artifact("../run")
    with pytest.raises(ArtifactRefused, match="needs a path"):
        rt.artifact(42)  # type: ignore[arg-type]
    with pytest.raises(ArtifactRefused, match="this run keeps no artifacts"):
        harness.runtime("a").artifact("x")
