"""A worker's mirror of a pushed repository: where a queued run reads its commit from.

    $QUIRE_CACHE_DIR/mirrors/<repo>.git     a bare repository, kept for the next run
    $QUIRE_CACHE_DIR/mirrors/<repo>.lock    held while a run fetches into it

A queued run names its repository by a URL (`file://` of the pushed
repository's path by default, or `[repositories.NAME] url`): the worker
may be on another machine than the git server. Before the run reads its
pipeline or materializes its workspace, the exact pushed object is
fetched into this machine's mirror, unless the mirror has it already
(a re-run, or another ref of the same commit): nothing else is fetched.

By its id first (protocol v2 serves any object the server holds; a
protocol v0 server only with `uploadpack.allowReachableSHA1InWant` or
`allowAnySHA1InWant`), else the pushed ref, whose tip must then be that
object (the ref may have moved on since the push). The mirror keeps each
ref's last fetched object under `refs/quire/...`, so the next fetch only
brings what is new and git's gc keeps what was fetched.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from quire.errors import FetchFailed, QuireError
from quire.paths import cache_dir
from quire.tools import git

MIRRORS = "mirrors"


def mirror_path(repo: str) -> Path:
    """The mirror of repository `repo` (its store name, `proj-1a2b3c4d`) on this machine."""
    return cache_dir() / MIRRORS / f"{repo}.git"


def keep_ref(ref: str) -> str:
    """Where the mirror keeps the object last fetched for pushed ref `ref`."""
    return "refs/quire/" + (ref.removeprefix("refs/") if ref.startswith("refs/") else ref)


def fetch(repo: str, url: str, sha: str, ref: str | None) -> Path:
    """The mirror of `repo`, holding object `sha` (pushed to `ref`) fetched from `url`.

    Two runs of one machine fetching into the same mirror take turns (a lock
    file beside it). `ref`: None when no ref was pushed (no fallback then). Raises
    `FetchFailed` naming the URL and the object.
    """
    mirror = mirror_path(repo)
    try:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(mirror.parent / f"{repo}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise FetchFailed(f"cannot create the mirror {mirror}: {exc.strerror}") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _fetch_locked(mirror, url, sha, ref)
    finally:
        os.close(lock)
    return mirror


def shown_url(url: str) -> str:
    """`url` as messages show it: a password in it (`https://user:token@host/...`) is `***`;
    a failure is recorded in the run, shown on the web and shipped to the run index."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


def _fetch_locked(mirror: Path, url: str, sha: str, ref: str | None) -> None:
    shown = shown_url(url)
    if not (mirror / "objects").is_dir():
        try:
            git.init_bare(mirror)
        except QuireError as exc:
            raise FetchFailed(f"cannot create the mirror {mirror}: {exc}") from exc
    elif git.has_object(mirror, sha):
        return  # fetched before: nothing to ask the server for
    keep = keep_ref(ref) if ref else "refs/quire/fetched"
    by_id = git.fetch(mirror, url, f"+{sha}:{keep}")
    if by_id.ok and git.has_object(mirror, sha):
        return
    if ref is None:
        raise FetchFailed(f"cannot fetch {sha} from {shown} into {mirror}: {by_id.stderr_tail(3)}")
    # A server that refuses objects by id (protocol v0 without allow*SHA1InWant): the ref.
    by_ref = git.fetch(mirror, url, f"+{ref}:{keep}")
    if by_ref.ok and git.has_object(mirror, sha):
        return
    why = (by_ref.stderr_tail(3) if not by_ref.ok else "") or (
        f"{ref} there is at {git.ref_target(mirror, keep) or 'nothing'} now"
    )
    raise FetchFailed(
        f"cannot fetch {sha} ({ref}) from {shown} into {mirror}: {why}"
        + (f"; by its id: {by_id.stderr_tail(2)}" if not by_id.ok else "")
    )
