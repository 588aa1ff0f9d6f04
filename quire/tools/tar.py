"""tar, as quire uses it: extract a stream into a directory, or pack one into a stream."""

from __future__ import annotations

from pathlib import Path


def extract_argv(destination: Path) -> list[str]:
    """`tar` reading an archive on stdin and extracting it under `destination`."""
    return ["tar", "--extract", "--file=-", f"--directory={destination}"]


def create_argv(source: Path, prefix: str) -> list[str]:
    """`tar` writing the contents of `source` to stdout, every entry under `prefix/`.

    Owned by root (as `git archive` makes them), so an extraction as root keeps no
    stray uid. `--transform`'s `S` flag leaves symlink targets alone: only member
    names (and hard links, which name members) get the prefix.
    """
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={source}",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        f"--transform=s,^\\.,{prefix},S",
        ".",
    ]


def create_listed_argv(source: Path, list_file: Path) -> list[str]:
    """`tar` writing the files named (NUL-separated) in `list_file`, relative to `source`,
    to stdout."""
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={source}",
        "--null",
        "--no-recursion",
        f"--files-from={list_file}",
    ]
