"""tar's argv."""

from __future__ import annotations

from pathlib import Path

from quire.tools import tar


def test_extract_argv_reads_stdin_into_the_destination() -> None:
    assert tar.extract_argv(Path("/cache/run 1/workspace")) == [
        "tar",
        "--extract",
        "--file=-",
        "--directory=/cache/run 1/workspace",
    ]
