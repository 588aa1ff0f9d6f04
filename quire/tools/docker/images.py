"""Run images: `docker build` (its output streamed, its error picked out of the noise),
untagging a run's tag, and listing and removing quire's images (`quire ci prune`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from quire.errors import DockerUnavailable, ImageBuildFailed, ProgramNotFound, ToolFailed
from quire.tools import process
from quire.tools.docker.cli import binary, daemon_unreachable, run
from quire.tools.docker.naming import is_run_image, short_image_name
from quire.tools.process import OutputHandler


@dataclass(frozen=True)
class Image:
    """One tag of a quire run image as the engine lists it (name as quire writes it)."""

    repository: str
    tag: str

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"


def build_argv(dockerfile: Path, context: Path, tags: Sequence[str]) -> list[str]:
    # --force-rm: the legacy builder otherwise keeps a failed step's container
    # (unlabelled, so nothing would ever remove it); BuildKit accepts and ignores it.
    argv = [binary(), "build", "--force-rm", "--file", str(dockerfile)]
    for tag in tags:
        argv += ["--tag", tag]
    return [*argv, str(context)]


def untag_argv(tag: str) -> list[str]:
    return [binary(), "image", "rm", "--no-prune", tag]


def images_argv() -> list[str]:
    """Every image tag the engine has, `repository<TAB>tag` per line (docker and podman)."""
    return [binary(), "image", "ls", "--format", "{{.Repository}}\t{{.Tag}}"]


def image_remove_argv(name: str) -> list[str]:
    """Untag `name`; its layers go too once no other tag holds them."""
    return [binary(), "image", "rm", name]


# What the legacy builder and the CLI print around the real error of a failed build.
_BUILD_NOISE = re.compile(
    r"^(DEPRECATED: The legacy builder is deprecated.*"
    r"|\s+Install the buildx component.*"
    r"|\s+https://docs\.docker\.com/go/buildx/?"
    r"|Usage:\s+docker build .*"
    r"|Run '\S+ build --help' for more information)$"
)


def build_error(stderr: bytes, output: bytes, lines: int = 12) -> str:
    """The part of a failed build's output that says why: stderr without the legacy
    builder's DEPRECATED banner and the CLI's usage lines; the output's tail if
    stderr says nothing else."""
    text = stderr.decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines() if line.strip() and not _BUILD_NOISE.match(line)]
    if kept:
        return "\n".join(kept[-lines:])
    return process.tail_text(output, lines) or "(no output)"


def build(dockerfile: Path, context: Path, tags: Sequence[str], on_output: OutputHandler) -> None:
    """`docker build`, streaming its output; raises `ImageBuildFailed` with docker's error."""
    tail = bytearray()
    errors = bytearray()

    def keep(stream: process.StreamName, chunk: bytes) -> None:
        tail.extend(chunk)
        del tail[:-8192]
        if stream == "stderr":
            errors.extend(chunk)
            del errors[:-8192]
        on_output(stream, chunk)

    try:
        result = process.stream(build_argv(dockerfile, context, tags), keep)
    except ProgramNotFound as exc:
        raise DockerUnavailable(f"docker is unavailable: {exc}") from exc
    if result.exit != 0:
        raise ImageBuildFailed(
            f"building image {tags[0]} from {dockerfile} failed (exit {result.exit}):\n"
            f"{build_error(bytes(errors), bytes(tail))}"
        )


def image_gone(stderr: str) -> bool:
    """Whether docker's (or podman's) stderr says the image or tag does not exist."""
    lowered = stderr.lower()
    return "no such image" in lowered or "image not known" in lowered


def remove_tag(tag: str) -> bool:
    """`docker image rm --no-prune TAG`: untag one image (layers other tags hold stay).

    Returns False if there was no such image. Raises `DockerUnavailable` when
    the engine cannot be reached, `ToolFailed` with docker's words otherwise.
    """
    result = run(untag_argv(tag))
    if result.ok:
        return True
    stderr = result.stderr_tail(3)
    if image_gone(stderr):
        return False
    if daemon_unreachable(stderr):
        raise DockerUnavailable(f"docker is unavailable: {stderr}")
    raise ToolFailed(f"`{' '.join(result.argv)}` exited {result.exit}: {stderr or '(no output)'}")


def run_images() -> list[Image]:
    """Every tag of quire's run images (`quire-ci/...`) the engine has.

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    result = run(images_argv())
    if not result.ok:
        raise DockerUnavailable(f"docker is unavailable: {result.stderr_tail(3)}")
    found = []
    for line in result.stdout.decode(errors="replace").splitlines():
        repository, _, tag = line.partition("\t")
        if is_run_image(repository) and tag and tag != "<none>":
            found.append(Image(short_image_name(repository), tag))
    return found


def remove_image(name: str) -> bool:
    """`docker image rm NAME`: untag it, and delete its layers if nothing else holds them.
    Returns whether the image itself was deleted (not only untagged).

    Raises `DockerUnavailable` when the engine cannot be reached, `ToolFailed` with the
    engine's words otherwise (an image a container still uses).
    """
    result = run(image_remove_argv(name))
    stderr = result.stderr_tail(3)
    if not result.ok:
        if image_gone(stderr):
            return False
        if daemon_unreachable(stderr):
            raise DockerUnavailable(f"docker is unavailable: {stderr}")
        raise ToolFailed(f"`{' '.join(result.argv)}` exited {result.exit}: {stderr}")
    return any(
        line.startswith("Deleted") for line in result.stdout.decode(errors="replace").splitlines()
    )
