"""tar, as quire uses it: extract a stream into a directory."""

from __future__ import annotations

from pathlib import Path


def extract_argv(destination: Path) -> list[str]:
    """`tar` reading an archive on stdin and extracting it under `destination`."""
    return ["tar", "--extract", "--file=-", f"--directory={destination}"]
