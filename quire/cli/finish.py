"""Ending a quire process: everything the interpreter does at exit but its teardown.

When a Python program's main code ends, the interpreter waits for its
threads, runs the atexit handlers, flushes the standard streams, and then
tears down every module and object it ever made. That teardown does
nothing a user could see (quire closes and fsyncs what it writes as it
goes; its logs are unbuffered; what a job's code registers for exit with
atexit or weakref.finalize still runs) and costs a short command a third of its
time: 0.05 s after `import typer` alone, 0.27 s of a 0.87 s do-nothing
`quire ci run` on a 2 vCPU VM (docs/decisions.md, "Every command ends
without the interpreter's teardown"). So quire's
entry points end through `finish`, which does the rest and then
`os._exit`s, as a warm quire's children always have.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

# What the interpreter exits with when it cannot flush stdout at exit.
FLUSH_FAILED = 120


def exit_code(main: Callable[[], object]) -> int:
    """Run `main`; the exit code it asks for with `SystemExit` (0 when it returns), read as
    the interpreter reads it. Any other exception goes on to the caller."""
    try:
        main()
    except SystemExit as exc:
        return code_of(exc.code)
    return 0


def code_of(code: object) -> int:
    """A `SystemExit` code as the interpreter turns it into a status: None is 0, an int is
    itself, anything else is printed to stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return int(code)  # a plain int: an IntEnum's (ExitCode) members are ints too
    print(code, file=sys.stderr)
    return 1


def finish(code: int) -> NoReturn:
    """End this process with `code` as the interpreter would end it, less its teardown."""
    os._exit(wind_down(code))


def wind_down(code: int) -> int:
    """What the interpreter does at exit before its teardown: wait for non-daemon threads
    (and shut down thread pools), run the atexit handlers, flush stdout and stderr.
    Returns the status to exit with: `code`, unless the output could not be written."""
    # The interpreter's own first step at exit: thread pools' exit hooks, then a join of
    # every non-daemon thread (a job's teardown after an abort, say).
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    return _flushed(code)


def _flushed(code: int) -> int:
    """Flush stdout and stderr; `code`, or FLUSH_FAILED when a successful command's output
    could not be written. A reader that went away (`quire ci runs | head`) is no error."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue  # as the interpreter: a stream closed on purpose has nothing to flush
        try:
            stream.flush()
        except BrokenPipeError:
            pass
        except OSError as exc:
            if stream is sys.stdout:
                _say(f"error: cannot write quire's output: {exc}\n")
                code = code or FLUSH_FAILED
    return code


def _say(message: str) -> None:
    with contextlib.suppress(OSError):  # no stderr either: the exit status says it
        os.write(2, message.encode(errors="replace"))
