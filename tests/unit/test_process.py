"""The one spawning helper, with real programs and PATH shims (never pytest-subprocess here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from plumbum import local

from quire.errors import ProgramNotFound
from quire.tools import process
from quire.tools.drain import Drainer
from quire.tools.process import StreamName

MIB = 1024 * 1024


class Collected:
    """An on_output handler that keeps every chunk, per stream, in arrival order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[StreamName, bytes]] = []

    def __call__(self, stream: StreamName, data: bytes) -> None:
        self.chunks.append((stream, data))

    def data(self, stream: StreamName) -> bytes:
        return b"".join(d for s, d in self.chunks if s == stream)


def gone(pid: int, within: float = 2.0) -> bool:
    """Whether `pid` has exited (a zombie nobody reaped yet counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def test_stream_delivers_stdout_and_stderr_separately() -> None:
    out = Collected()
    result = process.stream(["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"], out)
    assert result.exit == 0
    assert not result.timed_out
    assert out.data("stdout") == b"to-out\nmore-out\n"
    assert out.data("stderr") == b"to-err\n"


def test_stream_reports_a_non_zero_exit() -> None:
    result = process.stream(["sh", "-c", "exit 7"], Collected())
    assert result.exit == 7


def test_stream_runs_in_cwd_with_added_env(tmp_path: Path) -> None:
    out = Collected()
    result = process.stream(
        ["sh", "-c", 'pwd; echo "$ADDED"; echo "$QUIRE_STATE_DIR"'],
        out,
        cwd=tmp_path,
        env={"ADDED": "yes"},
    )
    assert result.exit == 0
    lines = out.data("stdout").decode().splitlines()
    assert lines[0] == str(tmp_path)
    assert lines[1] == "yes"
    # The rest of the environment is still there.
    assert lines[2] == os.environ["QUIRE_STATE_DIR"]


def test_stream_does_not_deadlock_when_both_pipes_fill() -> None:
    # stderr first: a reader that waits on stdout alone would block forever.
    script = (
        f"head -c {3 * MIB} /dev/zero >&2; head -c {3 * MIB} /dev/zero; head -c {MIB} /dev/zero >&2"
    )
    out = Collected()
    result = process.stream(["sh", "-c", script], out, timeout=20)
    assert not result.timed_out
    assert result.exit == 0
    assert len(out.data("stdout")) == 3 * MIB
    assert len(out.data("stderr")) == 4 * MIB


def test_stream_hands_output_over_as_it_arrives() -> None:
    seen_at: list[float] = []
    t0 = time.monotonic()

    def on_output(stream: StreamName, data: bytes) -> None:
        seen_at.append(time.monotonic() - t0)

    result = process.stream(["sh", "-c", "echo first; sleep 0.3; echo second"], on_output)
    assert result.exit == 0
    assert len(seen_at) == 2
    # The first line was handed over while the command still slept.
    assert seen_at[1] - seen_at[0] >= 0.25
    assert result.duration_s >= 0.3


def test_stream_timeout_kills_the_process_group_and_sets_timed_out() -> None:
    out = Collected()
    started = time.monotonic()
    result = process.stream(["sh", "-c", "sleep 30 & echo $!; sleep 30"], out, timeout=0.3)
    assert result.timed_out
    assert result.exit == -9
    assert time.monotonic() - started < 5
    grandchild = int(out.data("stdout").split()[0])
    assert gone(grandchild), "the background child outlived the timeout"


def test_stream_timeout_is_not_reported_for_a_quick_command() -> None:
    result = process.stream(["true"], Collected(), timeout=5)
    assert result.exit == 0
    assert not result.timed_out


def test_stream_reports_signal_kill_as_negative_exit() -> None:
    result = process.stream(["sh", "-c", "kill -TERM $$"], Collected())
    assert result.exit == -15
    assert not result.timed_out


def test_stream_kills_the_child_when_the_handler_raises() -> None:
    pids: list[int] = []

    def on_output(stream: StreamName, data: bytes) -> None:
        pids.append(int(data.split()[0]))
        raise RuntimeError("handler broke")

    with pytest.raises(RuntimeError, match="handler broke"):
        process.stream(["sh", "-c", "echo $$; sleep 30"], on_output)
    assert gone(pids[0])


def test_stream_of_an_unknown_program_raises_program_not_found() -> None:
    with pytest.raises(ProgramNotFound, match="no-such-program-quire"):
        process.stream(["no-such-program-quire"], Collected())


def test_run_captures_both_streams_and_exit() -> None:
    done = process.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert done.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.exit, done.ok) == (3, False)
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"
    assert done.stderr_tail() == "err"


def test_stderr_tail_keeps_the_last_lines() -> None:
    done = process.run(["sh", "-c", "for i in 1 2 3 4 5; do echo line$i >&2; done"])
    assert done.stderr_tail(2) == "line4\nline5"


def test_run_finds_programs_through_a_path_shim(tmp_path: Path) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "quire-fake-tool").write_text('#!/bin/sh\necho "shim got: $*"\n')
    (shims / "quire-fake-tool").chmod(0o755)
    with local.env():
        local.env.path.insert(0, str(shims))
        local.clear_program_cache()
        done = process.run(["quire-fake-tool", "a b", "c"])
    local.clear_program_cache()
    assert done.stdout == b"shim got: a b c\n"


def test_run_of_an_unknown_program_raises_program_not_found() -> None:
    with pytest.raises(ProgramNotFound, match="command not found"):
        process.run(["no-such-program-quire"])


def test_run_of_a_non_executable_path_raises_program_not_found(tmp_path: Path) -> None:
    script = tmp_path / "plain.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ProgramNotFound):
        process.run([str(script)])


def test_run_all_returns_each_result_in_order() -> None:
    results = process.run_all(
        [
            ["sh", "-c", "echo first-err >&2; exit 3"],
            ["sh", "-c", "echo second-out; echo second-err >&2"],
        ]
    )
    assert [r.exit for r in results] == [3, 0]
    assert [r.stderr for r in results] == [b"first-err\n", b"second-err\n"]
    assert results[1].stdout == b"second-out\n"
    assert results[0].argv[0] == "sh"


def test_run_all_runs_calls_at_the_same_time() -> None:
    started = time.monotonic()
    results = process.run_all([["sleep", "0.3"], ["sleep", "0.3"], ["sleep", "0.3"]])
    assert all(r.ok for r in results)
    assert time.monotonic() - started < 0.8


def test_begin_returns_while_the_call_runs_and_wait_collects_it(tmp_path: Path) -> None:
    go = tmp_path / "go"
    # The call can only end after begin() has returned: it waits for a file made later.
    pending = process.begin(
        ["sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.01; done; echo done; exit 4']
    )
    go.touch()
    result = pending.wait(timeout=10)
    assert (result.exit, result.stdout) == (4, b"done\n")
    assert result.argv[0] == "sh"


def test_cancel_kills_a_call_still_running_and_reaps_it() -> None:
    pending = process.begin(["sleep", "30"])
    (pid,) = [p.pid for p in psutil.Process().children() if p.name() == "sleep"]
    pending.cancel()
    assert not psutil.pid_exists(pid)  # killed and reaped: not even a zombie
    pending.cancel()  # twice is harmless


def test_begin_of_an_unknown_program_raises_program_not_found_at_once() -> None:
    with pytest.raises(ProgramNotFound):
        process.begin(["no-such-program-for-quire-tests"])


def test_pipe_reports_both_stages_exit_and_stderr() -> None:
    first, second = process.pipe(
        ["sh", "-c", "echo producer-complains >&2; echo data; exit 3"],
        ["sh", "-c", "cat >/dev/null; echo consumer-complains >&2; exit 5"],
    )
    assert (first.exit, first.stderr) == (3, b"producer-complains\n")
    assert (second.exit, second.stderr) == (5, b"consumer-complains\n")
    assert first.argv[0] == "sh"
    assert second.argv[-1].startswith("cat")


def test_pipe_passes_the_data_through(tmp_path: Path) -> None:
    target = tmp_path / "copy"
    first, second = process.pipe(
        ["sh", "-c", f"head -c {2 * MIB} /dev/zero"],
        ["sh", "-c", f'cat > "{target}"'],
    )
    assert first.ok and second.ok
    assert target.stat().st_size == 2 * MIB


def test_pipe_producer_sees_a_broken_pipe_when_the_consumer_dies_early() -> None:
    started = time.monotonic()
    first, second = process.pipe(["yes"], ["sh", "-c", "head -c 10 >/dev/null; exit 2"])
    assert time.monotonic() - started < 5
    assert second.exit == 2
    assert first.exit == -13  # SIGPIPE


def test_pipe_with_an_unknown_consumer_raises_and_leaves_no_producer() -> None:
    with pytest.raises(ProgramNotFound):
        process.pipe(["sleep", "30"], ["no-such-program-quire"])
    me = psutil.Process()
    assert not [
        c
        for c in me.children(recursive=True)
        if "sleep" in c.name() and c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]


def test_find_program_honours_a_search_path(tmp_path: Path) -> None:
    shims = tmp_path / "only-here"
    shims.mkdir()
    (shims / "quire-only-here").write_text("#!/bin/sh\n")
    (shims / "quire-only-here").chmod(0o755)
    assert process.find_program("quire-only-here", search_path=str(shims)) == str(
        shims / "quire-only-here"
    )
    with pytest.raises(ProgramNotFound):
        process.find_program("quire-only-here")


# --- a subreaper's orphan-collecting never takes a child quire started ------------------------


def test_orphans_are_never_collected_between_a_spawn_and_its_bookkeeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forced interleaving of the host-mode race: a fast child is already a zombie
    when the collector looks, before `popen` has returned its pid."""
    import threading

    real_command = process._command
    collectors: list[threading.Thread] = []

    class Racing:
        def __init__(self, argv: list[str]) -> None:
            self._real = real_command(argv)

        def popen(self, *args: object, **kwargs: object) -> object:
            proc = self._real.popen(*args, **kwargs)
            assert gone(proc.pid)  # a zombie: exactly what the collector looks for
            collector = threading.Thread(target=process.reap_orphans)
            collector.start()
            collectors.append(collector)
            collector.join(0.5)  # give the collector every chance to run in the window
            return proc

    monkeypatch.setattr(process, "_command", Racing)
    result = process.stream(["sh", "-c", "exit 7"], Collected(), leftovers=Drainer())
    for collector in collectors:
        collector.join()
    assert result.exit == 7  # neither ProcessLookupError nor a stolen exit status


def test_many_fast_commands_pass_while_orphans_are_collected_without_pause() -> None:
    """500 fast steps in a row, with the collector running flat out beside them."""
    import threading

    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            process.reap_orphans()

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    try:
        drainer = Drainer()
        exits = [process.stream(["true"], Collected(), leftovers=drainer).exit for _ in range(500)]
        drainer.close()
    finally:
        stop.set()
        collector.join()
    assert exits == [0] * 500
