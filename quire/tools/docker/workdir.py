"""Inside a running container's /work: commands by `docker exec`, the workspace
copied in (`docker cp -`, copy mode) and back out, /work read as a tar stream
(artifacts in copy mode), a file of it looked for, and /work given back to
quire's user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from quire.errors import ContainerStartFailed, DockerUnavailable, ProgramNotFound, ToolFailed
from quire.tools import process, tar
from quire.tools.docker.cli import binary, daemon_unreachable, engine_name, run
from quire.tools.docker.containers import WORKDIR


class WorkspaceCopyFailed(ContainerStartFailed):
    """Copying the workspace into, or back out of, the run's container failed."""


def copy_in_argv(container_id: str) -> list[str]:
    """`docker cp -`: a tar stream on stdin (entries under `work/`) extracted at the
    container's root, so /work is created whether or not the image has it."""
    return [binary(), "cp", "-", f"{container_id}:/"]


def copy_out_argv(container_id: str, destination: Path) -> list[str]:
    """The contents of /work (`/.`: not /work itself) into the existing `destination`."""
    return [binary(), "cp", f"{container_id}:{WORKDIR}/.", str(destination)]


def probe_argv(container_id: str, name: str) -> list[str]:
    """`docker cp` of /work/<name> to stdout (as tar): does the container see that file?
    The engine reads its filesystem: no program in the image is needed."""
    return [binary(), "cp", f"{container_id}:{WORKDIR}/{name}", "-"]


def exec_argv(
    container_id: str,
    command: Sequence[str],
    *,
    env_names: Sequence[str] = (),
    user: str | None = None,
) -> list[str]:
    """`docker exec` of `command` in /work. Env is passed by NAME only: the values
    travel in the docker client's own environment, never in an argv. Never --tty,
    so stdout and stderr stay apart."""
    argv = [binary(), "exec", "--interactive", "--workdir", WORKDIR]
    if user is not None:
        argv += ["--user", user]
    for name in env_names:
        argv += ["--env", name]
    return [*argv, container_id, *command]


def copy_in(container_id: str, workspace: Path) -> None:
    """Stream the workspace's tree into the created container's /work:
    `tar --create ... | docker cp - <id>:/`, no temporary tarball.

    Raises `WorkspaceCopyFailed` naming the stage that failed.
    """
    try:
        packed, copied = process.pipe(
            tar.create_argv(workspace, WORKDIR.lstrip("/")), copy_in_argv(container_id)
        )
    except ProgramNotFound as exc:
        raise WorkspaceCopyFailed(f"copying {workspace} into the container: {exc}") from exc
    for stage in (packed, copied):
        if not stage.ok:
            raise WorkspaceCopyFailed(
                f"copying {workspace} into container {container_id[:12]} ({engine_name()}) "
                f"failed: `{' '.join(stage.argv[:2])}` exited {stage.exit}: "
                f"{stage.stderr_tail(5) or '(no output)'}"
            )


def copy_out(container_id: str, destination: Path) -> None:
    """Copy /work's contents into the existing directory `destination`.

    Raises `WorkspaceCopyFailed`.
    """
    result = run(copy_out_argv(container_id, destination))
    if not result.ok:
        raise WorkspaceCopyFailed(
            f"copying {WORKDIR} of container {container_id[:12]} back to {destination} "
            f"failed (exit {result.exit}): {result.stderr_tail(3) or '(no output)'}"
        )


# docker: `Could not find the file ... in container`; podman: `... could not be found on
# container ...: no such file or directory`; docker's CLI against podman's API: `Error
# response from daemon: no such file or directory`. An answer of the daemon is not a
# lost daemon, whatever it says.
_FILE_NOT_FOUND = (
    "could not find the file",
    "could not be found on container",
    "error response from daemon",
)


def work_tar_argv(container_id: str) -> list[str]:
    """`docker cp` of /work's contents to stdout, as a tar stream (members `./...`)."""
    return [binary(), "cp", f"{container_id}:{WORKDIR}/.", "-"]


def read_work(container_id: str, consume: Callable[[IO[bytes]], None]) -> None:
    """Hand /work of the container, as a tar stream, to `consume` (artifacts in copy mode:
    quire reads the members itself). Raises `WorkspaceCopyFailed`, or what `consume`
    raised."""
    argv = work_tar_argv(container_id)
    try:
        done, problem = process.read_stdout(argv, consume)
    except ProgramNotFound as exc:
        raise WorkspaceCopyFailed(f"taking {WORKDIR} out of the container: {exc}") from exc
    if not done.ok:
        raise WorkspaceCopyFailed(
            f"taking {WORKDIR} out of container {container_id[:12]} ({engine_name()}) failed: "
            f"`{' '.join(argv[:2])}` exited {done.exit}: {done.stderr_tail(3) or '(no output)'}"
        ) from problem
    if problem is not None:
        raise problem


def why_unseen(container_id: str, name: str) -> str | None:
    """None if /work/<name> exists in the container (read through the engine), else the
    engine's words on why not.

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    result = run(probe_argv(container_id, name))
    if result.ok:
        return None
    stderr = result.stderr_tail(3)
    lowered = stderr.lower()
    not_found = name in stderr or any(marker in lowered for marker in _FILE_NOT_FOUND)
    if not not_found and daemon_unreachable(stderr):
        raise DockerUnavailable(f"lost the docker daemon: {stderr}")
    return stderr or f"`{binary()} cp` exited {result.exit}"


def kill_processes(container_id: str) -> None:
    """Kill every process in the container but its PID 1 (after a command timed out)."""
    run(exec_argv(container_id, ["kill", "-KILL", "-1"]))


def chown_workdir(container_id: str, uid: int, gid: int) -> None:
    """Give /work back to the user quire runs as (files written by root in the container)."""
    result = run(exec_argv(container_id, ["chown", "-R", f"{uid}:{gid}", WORKDIR], user="0"))
    if not result.ok:
        raise ToolFailed(
            f"chown of {WORKDIR} in {container_id[:12]} failed: {result.stderr_tail(2)}"
        )
