"""DockerExecutor: one container per run, every command through `docker exec`.

Entering: `docker version`, `.quire/Dockerfile` present, build the image
(`quire-ci/<repo>:<run-id>`, plus `:latest` so the next run's build is
cached), then the container that sleeps, its tree at /work by the
workspace mode (`[docker] workspace`, default by engine):

- bind: `docker run` with the workspace bind-mounted, then a check that the
  container sees a marker file quire wrote there (an engine that does not
  see this machine's files may silently mount an empty directory);
- copy: `docker create`, the workspace streamed in (`tar | docker cp -`),
  `docker start`.

Either way, each of the pipeline's caches (`cache(name, path)`) is a named
volume `quire-cache-<repo>-<name>` mounted at its path: created (labelled
quire.store, quire.repo, quire.cache) before the container on first use, and
kept after it, so the next run of the repository finds what this one left.

Leaving, however it happens: stamp `container_stopped_at`; bind: give /work
back to an unprivileged quire; copy with --keep-workspace: copy /work back
into the workspace; `docker rm --force` (the container stops with SIGKILL:
no grace period to wait out) and untag the run's image.

container.yml grows with each phase; a failure to write it is logged and
never fails the run or skips teardown.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from quire import interrupts
from quire.ci.events import (
    ContainerDied as ContainerDiedEvent,
)
from quire.ci.events import (
    ContainerRemoved,
    ContainerStarted,
    ContainerStopping,
    ImageBuildFinished,
    ImageBuildStarted,
    StreamName,
)
from quire.ci.run import tarstage
from quire.ci.run.artifacts import WorkspaceTree
from quire.ci.run.executors.base import Command, ExecResult, ExecutorSetup
from quire.errors import ContainerDied, DockerfileMissing, QuireError
from quire.tools import docker, process
from quire.tools.process import OutputHandler

DOCKERFILE = ".quire/Dockerfile"


# How long a container shown running after an exec killed by a signal is watched for its
# death (the engine records it a moment after the exec ends).
SETTLE_S = 1.0


class DockerExecutor:
    """Runs a run's commands in its own container."""

    name = "docker"

    def __init__(self, setup: ExecutorSetup) -> None:
        self.setup = setup
        self.workspace: Path = setup.workspace
        self.outlet = setup.outlet
        self.image_tag = f"{docker.image_repository(setup.repo)}:{setup.run_id}"
        self.container_id: str | None = None
        self.mode: docker.WorkspaceMode = setup.docker.workspace or docker.default_workspace_mode()
        self._built = False
        self._starting = False
        self._started = False

    # --- setup ----------------------------------------------------------------------------------

    def __enter__(self) -> DockerExecutor:
        try:
            self._set_up()
        except BaseException:
            self._tear_down()
            raise
        return self

    def _set_up(self) -> None:
        dockerfile = self.workspace / DOCKERFILE
        if not dockerfile.is_file():
            raise DockerfileMissing(
                f"a docker run needs {DOCKERFILE} in the repository at this revision; looked "
                f"for {dockerfile}. Add a Dockerfile there (its build context is the repository "
                "root), or run with --executor host"
            )
        # Asked while the image builds: the answer is needed only to start the container.
        engine = docker.EngineProbe()
        try:
            self._build(dockerfile, engine)
            self._start(engine.result())
        finally:
            engine.cancel()

    def _build(self, dockerfile: Path, engine: docker.EngineProbe) -> None:
        self.outlet.emit(ImageBuildStarted(self.image_tag, DOCKERFILE))

        def show(stream: StreamName, chunk: bytes) -> None:
            self.outlet.output(None, stream, chunk)

        try:
            tags = [self.image_tag, f"{docker.image_repository(self.setup.repo)}:latest"]
            docker.build(dockerfile, self.workspace, tags, show)
        except QuireError as exc:
            # An engine that cannot be reached is the news, not the build it failed.
            unavailable = engine.unavailable()
            problem = exc if unavailable is None else unavailable
            self.outlet.emit(ImageBuildFinished(self.image_tag, ok=False, error=str(problem)))
            if unavailable is not None:
                raise unavailable from exc
            raise
        self._built = True
        self.outlet.emit(ImageBuildFinished(self.image_tag, ok=True))

    def _start(self, engine: docker.Engine) -> None:
        self._create_caches()
        self._starting = True
        if self.mode == "copy":
            container_id = docker.create(self.image_tag, **self._container_spec())
            self.container_id = container_id
            docker.copy_in(container_id, self.workspace)
            docker.start(container_id)
        else:
            container_id = self._run_bind_mounted(engine)
        self._started = True
        self.outlet.emit(ContainerStarted(container_id, self.image_tag))

    def _run_bind_mounted(self, engine: docker.Engine) -> str:
        """`docker run` with the bind mount, making sure the engine mounted OUR tree.

        An engine that refuses a source it cannot see needs no more than the run.
        Another one, on another filesystem (or in another mount namespace), may
        create a missing source as an empty directory, or find a stale one at the
        same path: a marker with a fresh name, read back through the engine, tells
        either apart from the real workspace (one more engine call).
        """
        if engine.refuses_unseen_bind_sources:
            return self._run_detached()
        marker = self.workspace / f".quire-mount-check-{secrets.token_hex(8)}"
        marker.write_text(self.setup.run_id)
        try:
            container_id = self._run_detached()
            unseen = docker.why_unseen(container_id, marker.name)
            if unseen is not None:
                raise docker.WorkspaceNotVisible(
                    f"{docker.not_visible_message(self.workspace, container_id)}. Looking for "
                    f"{docker.WORKDIR}/{marker.name}, which quire wrote there: {unseen}"
                )
        finally:
            marker.unlink(missing_ok=True)
        return container_id

    def _run_detached(self) -> str:
        self.container_id = docker.run_detached(
            self.image_tag, mount_source=self.workspace, **self._container_spec()
        )
        return self.container_id

    def _cache_mounts(self) -> list[docker.CacheMount]:
        return [
            docker.CacheMount(docker.cache_volume(self.setup.repo, cache.name), cache.path)
            for cache in self.setup.caches
        ]

    def _create_caches(self) -> None:
        """Each cache's volume, made on the run's first use; an existing one is kept."""
        mounts = self._cache_mounts()
        if not mounts:
            return
        labels = {docker.STORE_LABEL: self.setup.store_label, docker.REPO_LABEL: self.setup.repo}
        docker.create_volumes(
            {
                mount.volume: {**labels, docker.CACHE_LABEL: cache.name}
                for mount, cache in zip(mounts, self.setup.caches, strict=True)
            }
        )
        listed = ", ".join(f"{m.volume} at {m.path}" for m in mounts)
        self.outlet.notice(f"caches: {listed}")

    def _container_spec(self) -> docker.ContainerSpec:
        settings = self.setup.docker
        return {
            "labels": {
                docker.RUN_ID_LABEL: self.setup.run_id,
                docker.REPO_LABEL: self.setup.repo,
                docker.STORE_LABEL: self.setup.store_label,
                docker.HOST_LABEL: self.setup.host,
            },
            "ceiling_s": settings.ceiling,
            "limits": docker.Limits(
                cpus=settings.cpus,
                memory=settings.memory,
                network=settings.network,
                labels=settings.labels,
            ),
            "caches": self._cache_mounts(),
        }

    # --- commands -------------------------------------------------------------------------------

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        """`docker exec` the command in /work; a dead container raises `ContainerDied`."""
        assert self.container_id is not None, "execute() outside the with-block"
        argv = docker.exec_argv(self.container_id, command.argv, env_names=sorted(command.env))
        result = process.stream(argv, on_output, env=command.env, timeout=command.timeout)
        if result.timed_out:
            # Killing the docker client leaves the command running in the container.
            docker.kill_processes(self.container_id)
        elif result.exit != 0:
            # 137: SIGKILL, what killing the container does to the exec's process.
            self._check_alive(killed=result.exit == 137 and interrupts.received() is None)
        return ExecResult(result.exit, result.started_at, result.duration_s, result.timed_out)

    def _check_alive(self, *, killed: bool = False) -> None:
        """After a failed exec: was it the command, or did the container (or docker) go?

        A container killed under a command ends the exec (137) a moment before the engine
        marks the container stopped: after an exec killed so (and quire itself not being
        interrupted), a container still shown running is looked at again for up to
        `SETTLE_S` before the command alone is blamed (a command SIGKILLed in a living
        container pays that once)."""
        assert self.container_id is not None
        state = docker.inspect_state(self.container_id)
        deadline = time.monotonic() + (SETTLE_S if killed else 0.0)
        while state is not None and state.running and time.monotonic() < deadline:
            time.sleep(0.05)
            state = docker.inspect_state(self.container_id)
        if state is not None and state.running:
            return
        if state is None:
            why = "it no longer exists (removed after it stopped; exit status unknown)"
        else:
            why = f"status {state.status}, exit code {state.exit_code}"
            if state.oom_killed:
                why += ", killed for running out of memory (OOM)"
        self.outlet.emit(
            ContainerDiedEvent(
                self.container_id,
                exit_code=None if state is None else state.exit_code,
                oom_killed=None if state is None else state.oom_killed,
            )
        )
        raise ContainerDied(f"the run's container {self.container_id[:12]} died: {why}")

    def end_job(self) -> None:
        """Nothing to do: a job's processes live in the run's container and end with it."""

    def abort(self) -> None:
        """Kill every process in the container but its PID 1: each `docker exec` returns."""
        if self.container_id is not None:
            docker.kill_processes(self.container_id)

    # --- artifacts ------------------------------------------------------------------------------

    @contextmanager
    def workspace_tree(self) -> Iterator[WorkspaceTree]:
        """/work as quire can read it: bind mode, the workspace it is mounted from; copy
        mode, a private copy taken out of the container (`docker cp` as a tar stream whose
        members are checked, quire/ci/run/tarstage.py) and removed after."""
        if self.mode != "copy":
            yield WorkspaceTree(self.workspace, docker.WORKDIR)
            return
        assert self.container_id is not None, "workspace_tree() outside the with-block"
        container_id = self.container_id
        # One directory per call: jobs side by side (`--jobs`) may keep artifacts at once.
        staging = Path(tempfile.mkdtemp(prefix="artifact-", dir=self.workspace.parent))
        try:
            docker.read_work(container_id, lambda stream: tarstage.unpack(stream, staging))
            yield WorkspaceTree(staging, docker.WORKDIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- teardown -------------------------------------------------------------------------------

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tear_down()

    def _tear_down(self) -> None:
        with interrupts.shielded():
            if self.container_id is None and self._starting:
                self.container_id = self._find_started_container()
            if self.container_id is None and not self._built:
                return
            if self.container_id is not None:
                self.outlet.emit(ContainerStopping(self.container_id))
                if self.mode == "copy":
                    self._copy_back()
                else:
                    self._give_back_workdir()
            problems = self._remove()
            if self.container_id is not None:
                self.outlet.emit(ContainerRemoved(self.container_id))
            for problem in problems:
                self.outlet.warning(f"teardown: {problem}")

    def _find_started_container(self, wait_s: float = 1.0) -> str | None:
        """The container a `docker run` we interrupted may still be creating.

        Killing the client does not cancel the engine's work, so look for the
        run's label for up to `wait_s` (creation takes a few hundred ms).
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                found = docker.labelled_containers(
                    self.setup.store_label, self.setup.host, self.setup.run_id
                )
            except QuireError:
                return None
            if found or time.monotonic() >= deadline:
                return found[0].container_id if found else None
            time.sleep(0.1)

    def _remove(self) -> list[str]:
        try:
            return docker.teardown(self.container_id, self.image_tag if self._built else None)
        except QuireError as exc:
            return [str(exc)]

    def _give_back_workdir(self) -> None:
        # Files the container wrote into the bind mount belong to its root; an
        # unprivileged quire could not delete the workspace afterwards.
        if os.geteuid() == 0 or self.container_id is None:
            return
        try:
            docker.chown_workdir(self.container_id, os.geteuid(), os.getegid())
        except QuireError as exc:
            self.outlet.warning(f"teardown: {exc}")

    def _copy_back(self) -> None:
        """--keep-workspace in copy mode: the kept workspace is what /work became.

        Copied into a fresh directory that replaces the workspace only once complete;
        a failure is a warning and leaves the tree as it was materialized.
        """
        if not (self.setup.keep_workspace and self._started and self.container_id):
            return
        fresh = self.workspace.with_name(self.workspace.name + ".from-container")
        try:
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir(parents=True)
            docker.copy_out(self.container_id, fresh)
            shutil.rmtree(self.workspace)
            fresh.rename(self.workspace)
        except (QuireError, OSError) as exc:
            shutil.rmtree(fresh, ignore_errors=True)
            self.outlet.warning(f"teardown: {self.workspace} keeps the tree as it was: {exc}")
