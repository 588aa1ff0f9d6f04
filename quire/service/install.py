"""`quire ci hook install | uninstall`: quire's post-receive hook in a repository.

The hook is a small sh script in the repository's hooks directory (or
`core.hooksPath`), marked by `MARKER`. It runs this quire's Python with
`-I -S` (no site-packages, no user environment: only the standard library
and the quire package, whose directory it puts on sys.path) on
`quire.service.hook`, with the state directory and ref patterns fixed at
install time, so a push queues runs for the workers of that state
directory whatever the pusher's environment.

A post-receive hook that is not quire's is kept: it is renamed to
`post-receive.before-quire` and quire's script runs it after queueing,
with the same stdin and arguments, and exits with its status. Uninstall
puts it back.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import quire
from quire.service.errors import HookConflict
from quire.tools import git

HOOK = "post-receive"
CHAINED = "post-receive.before-quire"
MARKER = "# quire-hook: v1"

_ENTRY = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from quire.service.hook import main; sys.exit(main())"
)


@dataclass(frozen=True)
class HookPlan:
    """What install did or uninstall undid, for the message to the user."""

    hook: Path
    chained: Path | None  # the earlier hook, kept and run after quire's
    replaced: bool = False  # an earlier quire hook was rewritten


def render_hook(
    *,
    python: str,
    package_root: Path,
    state: Path,
    patterns: Sequence[str],
    chained: bool,
) -> str:
    """The text of quire's post-receive script."""
    args = [python, "-I", "-S", "-c", _ENTRY, str(package_root), "--state-dir", str(state)]
    for pattern in patterns:
        args += ["--pattern", pattern]
    command = " ".join(shlex.quote(a) for a in args)
    shown = " ".join(patterns) or "every branch and tag"
    head = (
        "#!/bin/sh\n"
        f"{MARKER}: installed by `quire ci hook install`; remove with `quire ci hook uninstall`.\n"
        f"# Queues a CI run per pushed ref ({shown}) for the workers of {state}.\n"
    )
    if not chained:
        return head + f"exec {command}\n"
    return head + (
        f"# The repository's earlier hook is kept as {CHAINED} and runs after it.\n"
        "input=$(cat)\n"
        f'printf "%s\\n" "$input" | {command}\n'
        f'printf "%s\\n" "$input" | "$(dirname "$0")/{CHAINED}" "$@"\n'
    )


def _hooks_of(repo: Path) -> Path:
    return git.hooks_dir(git.open_repository(repo).git_dir)


def is_ours(path: Path) -> bool:
    """Whether the hook at `path` is quire's."""
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def install(repo: Path, patterns: Sequence[str], state: Path) -> HookPlan:
    """Install quire's post-receive hook in `repo`; raises `NotARepository`, `HookConflict`."""
    hooks = _hooks_of(repo)
    hook, chained = hooks / HOOK, hooks / CHAINED
    hooks.mkdir(parents=True, exist_ok=True)
    replaced = is_ours(hook)
    if not replaced and (hook.exists() or hook.is_symlink()):
        if chained.exists() or chained.is_symlink():
            raise HookConflict(
                f"{hook} is not quire's and {chained} exists already: move one of them away, "
                "or merge them into one hook, then run `quire ci hook install` again"
            )
        if not hook.is_file():
            raise HookConflict(f"{hook} is not a regular file: move it away and install again")
        os.rename(hook, chained)
    has_chained = chained.exists() or chained.is_symlink()
    text = render_hook(
        python=sys.executable,
        package_root=Path(quire.__file__).resolve().parent.parent,
        state=state.resolve(),
        patterns=patterns,
        chained=has_chained,
    )
    tmp = hooks / f".{HOOK}.quire-tmp"
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, hook)
    return HookPlan(hook, chained if has_chained else None, replaced)


def uninstall(repo: Path) -> HookPlan | None:
    """Remove quire's hook from `repo` and put back the one it kept; None if none was
    installed. Raises `HookConflict` when the post-receive hook there is not quire's."""
    hooks = _hooks_of(repo)
    hook, chained = hooks / HOOK, hooks / CHAINED
    if not is_ours(hook):
        if hook.exists():
            raise HookConflict(f"{hook} is not quire's hook: left alone")
        return None
    hook.unlink()
    if chained.exists() or chained.is_symlink():
        os.rename(chained, hook)
        return HookPlan(hook, chained)
    return HookPlan(hook, None)
