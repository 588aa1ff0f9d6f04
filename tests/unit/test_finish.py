"""`quire.cli.finish`: a process ends as the interpreter would end it, less the teardown.

Each test runs a small program in a real python process, since `finish` ends its process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quire import __version__
from quire.cli import finish, launch
from tests.helpers import ROOT, fresh_python


def run_program(body: str, tmp_path: Path, **popen: object) -> subprocess.CompletedProcess[str]:
    return fresh_python(
        "from quire.cli.finish import exit_code, finish\n" + textwrap.dedent(body),
        tmp_path,
        **popen,
    )


def test_output_still_in_stdouts_buffer_reaches_the_pipe(tmp_path: Path) -> None:
    done = run_program(
        """
        print("no newline, still buffered", end="")
        sys.stderr.write("and on stderr")
        finish(0)
        """,
        tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "no newline, still buffered",
        "and on stderr",
    )


def test_atexit_handlers_run(tmp_path: Path) -> None:
    done = run_program(
        """
        import atexit
        atexit.register(lambda: print("atexit ran"))
        finish(4)
        """,
        tmp_path,
    )
    assert (done.returncode, done.stdout) == (4, "atexit ran\n")


def test_a_non_daemon_thread_is_waited_for(tmp_path: Path) -> None:
    done = run_program(
        """
        import threading, time
        def late():
            time.sleep(0.3)
            print("thread done", flush=True)
        threading.Thread(target=late).start()
        finish(0)
        """,
        tmp_path,
    )
    assert done.stdout == "thread done\n"


def test_a_thread_pool_never_shut_down_ends_instead_of_hanging(tmp_path: Path) -> None:
    # Its idle workers are non-daemon threads that only the pool's exit hook stops.
    done = run_program(
        """
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=2)
        print(pool.submit(lambda: 6 * 7).result())
        finish(0)
        """,
        tmp_path,
        timeout=10,
    )
    assert (done.returncode, done.stdout) == (0, "42\n")


def test_the_teardown_of_modules_and_objects_is_skipped(tmp_path: Path) -> None:
    marker = tmp_path / "torn-down"
    done = run_program(
        f"""
        class Witness:
            # Bound now: the teardown clears the module's names before the object goes.
            def __del__(self, _open=open, _path={str(marker)!r}):
                _open(_path, "w").close()
        witness = Witness()
        finish(0)
        """,
        tmp_path,
    )
    assert done.returncode == 0
    assert not marker.exists()


@pytest.mark.parametrize(
    ("body", "code", "stderr"),
    [
        ("pass", 0, ""),
        ("raise SystemExit", 0, ""),
        ("raise SystemExit(3)", 3, ""),
        ("raise SystemExit('error: told so')", 1, "error: told so\n"),
    ],
)
def test_exit_code_reads_system_exit_as_the_interpreter_does(
    tmp_path: Path, body: str, code: int, stderr: str
) -> None:
    done = run_program(
        f"""
        def main():
            {body}
        finish(exit_code(main))
        """,
        tmp_path,
    )
    assert (done.returncode, done.stderr) == (code, stderr)


def test_other_exceptions_are_left_to_the_interpreter() -> None:
    def broken() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finish.exit_code(broken)


def test_a_reader_that_went_away_is_no_error(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)
    done = run_program(
        """
        print("nobody reads this", end="")
        finish(0)
        """,
        tmp_path,
        stdout=write,
    )
    os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


def test_output_that_cannot_be_written_fails_a_successful_command(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        done = run_program(
            """
            print("does not fit", end="")
            finish(0)
            """,
            tmp_path,
            stdout=full,
        )
    assert done.returncode == finish.FLUSH_FAILED
    assert "error: cannot write quire's output" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_quire_command_prints_everything_into_a_pipe(tmp_path: Path) -> None:
    env = {**os.environ, launch.NO_WARM_ENV: "1", "QUIRE_STATE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "quire"), "--version"],
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert (done.returncode, done.stdout) == (0, f"quire {__version__}\n".encode())
