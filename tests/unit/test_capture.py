"""A job's own print(), sys.stdout/sys.stderr and logging writes become its output."""

from __future__ import annotations

import logging
import sys

import pytest

from quire.ci.run.capture import captured_output
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from tests.helpers import Collected


@pytest.fixture
def seen() -> Collected:
    return Collected()


@pytest.fixture
def outlet(seen: Collected) -> RunOutlet:
    return RunOutlet(Redactor(["s3cret"]), [seen])


def test_print_inside_a_job_is_that_jobs_stdout_masked(seen: Collected, outlet: RunOutlet) -> None:
    with captured_output(outlet, "build"):
        print("token:", "s3cret")
        print("err words", file=sys.stderr)
    outlet.close()
    assert seen.output("build") == b"token: ***\n"
    assert seen.output("build", "stderr") == b"err words\n"


def test_a_write_without_newline_arrives_at_once(seen: Collected, outlet: RunOutlet) -> None:
    with captured_output(outlet, "build"):
        print("no newline", end="")
        assert seen.output("build") == b"no newline"


def test_bytes_written_to_the_buffer_arrive_exactly(seen: Collected, outlet: RunOutlet) -> None:
    with captured_output(outlet, "build"):
        sys.stdout.buffer.write(b"\xff raw\n")
    assert seen.output("build") == b"\xff raw\n"


def test_the_real_streams_are_back_afterwards_also_after_an_exception(outlet: RunOutlet) -> None:
    before = sys.stdout, sys.stderr
    with pytest.raises(RuntimeError), captured_output(outlet, "build"):
        assert sys.stdout is not before[0]
        raise RuntimeError("job failed")
    assert (sys.stdout, sys.stderr) == before


def test_a_logging_handler_on_the_real_stderr_writes_into_the_job_and_is_put_back(
    seen: Collected, outlet: RunOutlet
) -> None:
    real_stderr = sys.stderr
    handler = logging.StreamHandler(real_stderr)
    logger = logging.getLogger("quire-test-capture")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with captured_output(outlet, "build"):
            logger.warning("logged s3cret")
        assert handler.stream is real_stderr
    finally:
        logger.removeHandler(handler)
    outlet.close()
    assert seen.output("build", "stderr") == b"logged ***\n"
