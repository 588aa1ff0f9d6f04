"""A container's /work, as a tar stream, unpacked into a private directory of quire's.

Copy mode's artifacts are read from this copy (quire/ci/run/artifacts.py
resolves paths in it as in any workspace). The archive comes from the
engine but its contents from the job, so every member is checked before
anything is written: names stay inside the directory (no absolute name, no
`..`, nothing under a member that was a symlink), symlinks are made as
links and never followed here, hard links copy a file unpacked before,
devices and fifos are left out.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import IO

from quire.errors import ArtifactRefused

_CHUNK = 1024 * 1024


class _Unpacker:
    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.links: set[str] = set()
        self.files: set[str] = set()

    def name(self, member: str) -> str | None:
        """The member's checked name under the destination, or None for the root itself."""
        parts = [p for p in member.split("/") if p not in ("", ".")]
        if member.startswith("/") or ".." in parts:
            raise ArtifactRefused(f"the container's /work holds a member named {member!r}")
        for end in range(1, len(parts)):
            if "/".join(parts[:end]) in self.links:
                raise ArtifactRefused(f"the container's /work holds {member!r} under a link")
        return "/".join(parts) or None

    def add(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = self.name(member.name)
        if name is None:
            return
        target = self.destination / name
        if member.isdir():
            target.mkdir(exist_ok=True)
        elif member.issym():
            os.symlink(member.linkname, target)
            self.links.add(name)
        elif member.isreg():
            source = archive.extractfile(member)
            assert source is not None  # a regular member always has a body
            with source, open(target, "xb") as out:
                shutil.copyfileobj(source, out, _CHUNK)
            self.files.add(name)
        elif member.islnk():
            linked = self.name(member.linkname)
            if linked not in self.files:
                raise ArtifactRefused(
                    f"the container's /work holds a hard link {member.name!r} to "
                    f"{member.linkname!r}, which is no file before it"
                )
            # Created, never opened if it exists: copyfile would write through a link member
            # of the same name, out of the directory.
            with open(self.destination / linked, "rb") as source, open(target, "xb") as out:
                shutil.copyfileobj(source, out, _CHUNK)
            self.files.add(name)
        # devices, fifos: nothing an artifact can hold


def unpack(stream: IO[bytes], destination: Path) -> None:
    """Unpack the tar `stream` into the existing, empty directory `destination`."""
    unpacker = _Unpacker(destination)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                unpacker.add(archive, member)
    except tarfile.TarError as exc:
        raise ArtifactRefused(f"the container's /work could not be read as tar: {exc}") from exc
    except OSError as exc:
        raise ArtifactRefused(f"the container's /work could not be unpacked: {exc}") from exc
