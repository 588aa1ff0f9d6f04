"""docker, as quire uses it. Nothing else in quire builds a docker argv or spawns docker.

One module per concern; callers use the names re-exported here (`docker.run_detached`):

    cli         the CLI ($QUIRE_DOCKER or `docker`), running it, its failures, `docker version`
    naming      the labels and names quire gives containers, cache volumes and run images
    images      `docker build`, untagging, listing and removing run images
    containers  the run's container: run/create, start, inspect, teardown
    workdir     inside its /work: exec, copy in and out, read as tar, a file looked for, chown
    listing     the containers of quire's own store and host the engine holds (reconcile)
    volumes     cache volumes: create, list, remove

Every format string and flag here works on both docker (20.10+) and podman
(4.3+): the engine's version comes from `version` (podman's `info` has no
`.ServerVersion`), containers are listed by id with `ps --quiet` and their
labels read with `inspect` (podman's `ps` has no `.Label`), and containers
stop with SIGKILL (podman's `rm --force` would otherwise wait out a 10 s
SIGTERM grace on the `sleep` PID 1).

The run's tree reaches /work in one of two ways (`[docker] workspace`):
`bind`, a bind mount of the local workspace (the engine must see this
machine's files), or `copy`, a tar stream into the created container
(`docker cp -`) before it starts, for an engine elsewhere.

argv builders are pure functions; the wrappers run them through
`tools.process` and raise `QuireError`s carrying docker's stderr tail.
"""

from __future__ import annotations

from quire.tools.docker.cli import (
    Engine,
    EngineKind,
    EngineProbe,
    WorkspaceMode,
    binary,
    daemon_unreachable,
    default_workspace_mode,
    engine,
    engine_host,
    engine_name,
    parse_engine,
    version_argv,
)
from quire.tools.docker.containers import (
    STOP_SIGNAL,
    WORKDIR,
    CacheMount,
    ContainerSpec,
    ContainerState,
    Limits,
    WorkspaceNotVisible,
    create,
    create_argv,
    inspect_argv,
    inspect_state,
    not_visible_message,
    remove_argv,
    run_argv,
    run_detached,
    start,
    start_argv,
    teardown,
)
from quire.tools.docker.images import (
    Image,
    build,
    build_argv,
    build_error,
    image_gone,
    image_remove_argv,
    images_argv,
    remove_image,
    remove_tag,
    run_images,
    untag_argv,
)
from quire.tools.docker.listing import (
    ContainerListing,
    LabelledContainer,
    labelled_containers,
    labels_argv,
    list_argv,
)
from quire.tools.docker.naming import (
    CACHE_LABEL,
    HOST_LABEL,
    REPO_LABEL,
    RUN_ID_LABEL,
    STORE_LABEL,
    cache_volume,
    image_repository,
    is_run_image,
    short_image_name,
)
from quire.tools.docker.volumes import (
    CacheVolumeFailed,
    Volume,
    cache_volumes,
    create_volumes,
    remove_volume,
    volume_create_argv,
    volume_inspect_argv,
    volume_list_argv,
    volume_remove_argv,
)
from quire.tools.docker.workdir import (
    WorkspaceCopyFailed,
    chown_workdir,
    copy_in,
    copy_in_argv,
    copy_out,
    copy_out_argv,
    exec_argv,
    kill_processes,
    probe_argv,
    read_work,
    why_unseen,
    work_tar_argv,
)

__all__ = [
    "CACHE_LABEL",
    "HOST_LABEL",
    "REPO_LABEL",
    "RUN_ID_LABEL",
    "STOP_SIGNAL",
    "STORE_LABEL",
    "WORKDIR",
    "CacheMount",
    "CacheVolumeFailed",
    "ContainerListing",
    "ContainerSpec",
    "ContainerState",
    "Engine",
    "EngineKind",
    "EngineProbe",
    "Image",
    "LabelledContainer",
    "Limits",
    "Volume",
    "WorkspaceCopyFailed",
    "WorkspaceMode",
    "WorkspaceNotVisible",
    "binary",
    "build",
    "build_argv",
    "build_error",
    "cache_volume",
    "cache_volumes",
    "chown_workdir",
    "copy_in",
    "copy_in_argv",
    "copy_out",
    "copy_out_argv",
    "create",
    "create_argv",
    "create_volumes",
    "daemon_unreachable",
    "default_workspace_mode",
    "engine",
    "engine_host",
    "engine_name",
    "exec_argv",
    "image_gone",
    "image_remove_argv",
    "image_repository",
    "images_argv",
    "inspect_argv",
    "inspect_state",
    "is_run_image",
    "kill_processes",
    "labelled_containers",
    "labels_argv",
    "list_argv",
    "not_visible_message",
    "parse_engine",
    "probe_argv",
    "read_work",
    "remove_argv",
    "remove_image",
    "remove_tag",
    "remove_volume",
    "run_argv",
    "run_detached",
    "run_images",
    "short_image_name",
    "start",
    "start_argv",
    "teardown",
    "untag_argv",
    "version_argv",
    "volume_create_argv",
    "volume_inspect_argv",
    "volume_list_argv",
    "volume_remove_argv",
    "why_unseen",
    "work_tar_argv",
]
