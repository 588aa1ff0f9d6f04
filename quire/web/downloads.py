"""Artifacts as downloads: `GET /runs/<repo>/<run>/artifacts/<job>/<name>[/<path>]`.

A download is always a download: `Content-Disposition: attachment`,
`application/octet-stream` (with the app's `nosniff`), so a kept HTML page
or SVG is never rendered in the page's origin. Only a file the job's record
lists is served, opened below the run's directory without following a link
(quire/ci/store/artifacts.py); anything else is a 404.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from starlette.responses import Response, StreamingResponse

from quire.ci.store.artifacts import ArtifactNotFound, KeptFile, find_kept, open_kept
from quire.ci.store.records import JobState, RecordUnreadable, read_record
from quire.ci.store.runs import RunDir
from quire.web.lookup import NotFound, StoreView

_CHUNK = 256 * 1024


def artifact_path(run_path: str, kept: KeptFile) -> str:
    """The download address of a kept file, under the run's address."""
    return f"{run_path}/artifacts/{quote(kept.job, safe='')}/{quote(kept.file.relative, safe='/')}"


def disposition(filename: str) -> str:
    """`attachment` with the file's name: an ASCII fallback, and the exact name (RFC 6266)."""
    fallback = "".join(_plain(c) for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _plain(char: str) -> str:
    return char if char.isascii() and char.isprintable() and char not in '"\\' else "_"


def download(view: StoreView, run: RunDir, job: str, relative: str) -> Response:
    """The kept file `relative` of `job` in `run`; raises `NotFound`."""
    job_dir = view.job_dir(run, job)
    try:
        state = read_record(job_dir / "state.yml", JobState)
        kept = find_kept([state], job, relative)
        handle = open_kept(view.refind(run).path, kept)
    except (RecordUnreadable, ArtifactNotFound) as exc:
        raise NotFound(f"no artifact {relative!r} of job {job!r} in run {run.run_id}") from exc
    return StreamingResponse(
        _chunks(handle),
        media_type="application/octet-stream",
        headers={
            "content-disposition": disposition(Path(relative).name),
            "content-length": str(os.fstat(handle.fileno()).st_size),
            "x-quire-sha256": kept.file.sha256,
            "cache-control": "private, no-transform",
        },
    )


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(_CHUNK):
            yield chunk
