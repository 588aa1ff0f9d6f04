"""bubblewrap (`bwrap`), as quire uses it: the sandbox a docker run's job host runs in.

`wrap(argv, env=...)` returns the argv that runs `argv` in a fresh root built
only from what quire hands it:

    /usr/lib, /usr/lib64     read-only (the dynamic loader, libc, libpython if it lives there);
    /lib, /lib64             as on the host (a symlink into /usr on merged-/usr systems)
    <interpreter>            read-only: sys.executable, resolved (a venv's python is its base's)
    <libpython>              read-only, when the interpreter links it from its own prefix
    <stdlib>                 read-only; the base install's site-packages inside it hidden
    <quire package>          read-only, at its own path; PYTHONPATH names its directory
    <read_only...>           read-only, at their own paths (the caller's extra binds)
    /dev                     a minimal one (null, zero, random, tty, ...)
    /proc                    of the sandbox's own PID namespace
    /tmp                     an empty private tmpfs, the only writable place; the cwd

Nothing else of the host: no state, cache or config directory, no home, no
/etc, no /run or /var/run (so no docker socket). Its own user, PID, network,
IPC, UTS and cgroup namespaces; uid and gid 65534 inside; no capabilities;
no new privileges; a session of its own; it dies with its parent.
Descriptors the spawner keeps open (`pass_fds`) stay open inside: bwrap
closes none.

`check_available()` runs that sandbox once per process and raises
`SandboxUnavailable` saying why it cannot work here.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from quire.errors import ProgramNotFound, SandboxUnavailable
from quire.tools import process

# nobody/nogroup: an identity that owns nothing, inside and (for a non-root quire) outside.
SANDBOX_UID = 65534
SANDBOX_GID = 65534

# The dynamic loader's and libc's homes; a symlink (merged /usr) is recreated, not followed.
_SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64")

_NAMESPACES = (
    "--unshare-user",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
)

_UNSANDBOXED = (
    "To run pipelines without the sandbox, set `[docker] sandbox = false` in quire's config"
    " file ($QUIRE_CONFIG, else $XDG_CONFIG_HOME/quire/config.toml)."
)


@dataclass(frozen=True)
class PythonInstall:
    """What the sandbox needs of quire's Python: the paths to bind read-only and where quire is."""

    interpreter: Path
    binds: tuple[Path, ...]  # the interpreter, libpython, the stdlib directories
    hidden: tuple[Path, ...]  # site-packages directories inside those binds, shown empty
    package: Path  # the `quire` package directory
    pythonpath: Path  # the directory that holds it


@cache
def python_install() -> PythonInstall:
    """quire's own interpreter and what it needs to start and import quire (stdlib only)."""
    import quire

    interpreter = Path(sys.executable).resolve()
    binds = [interpreter]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir, soname = sysconfig.get_config_vars("LIBDIR", "INSTSONAME")
        binds.append(Path(libdir, soname))
    # The base install's stdlib: a venv's interpreter, resolved, runs as its base and
    # never reads the venv (nor its site-packages).
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    binds += [Path(sysconfig.get_path(name, vars=base)) for name in ("stdlib", "platstdlib")]
    sites = site.getsitepackages([sys.base_prefix, sys.base_exec_prefix])
    package = Path(quire.__file__).resolve().parent
    return PythonInstall(
        interpreter=interpreter,
        binds=tuple(_existing(binds)),
        hidden=tuple(_existing(Path(p) for p in sites)),
        package=package,
        pythonpath=package.parent,
    )


def interpreter() -> Path:
    """The interpreter the sandbox holds (quire's own, resolved): argv[0] for Python in it."""
    return python_install().interpreter


def wrap(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    read_only: Sequence[Path] = (),
) -> list[str]:
    """The argv that runs `argv` (absolute argv[0]) under bwrap in the sandbox the module
    docstring lists, with `read_only` bound read-only at their own paths too.

    Its environment is exactly `env` plus PYTHONPATH (quire's directory; `env` may
    override it) and PWD (set by bwrap). bwrap itself starts from an empty environment
    (`env -i`), whatever the spawner passes: its init process, PID 1 inside, keeps the
    environment bwrap started with, and the sandbox can read /proc/1/environ (quire's
    environment may hold the values of `{ env = ... }` secrets). The values of `env`
    travel in bwrap's argv, which other users can read: pass no secret through `env`.
    To keep a descriptor open inside, pass it to the spawner
    (`process.start_with_fds(pass_fds=...)`).
    Raises `SandboxUnavailable` when bwrap is not installed.
    """
    install = python_install()
    return [
        *(_env(), "-i"),
        _bwrap(),
        *_NAMESPACES,
        *("--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)),
        # bwrap drops an unprivileged caller's capabilities itself; a root caller's
        # (the bounding set included) go only when asked.
        *("--cap-drop", "ALL"),
        "--die-with-parent",
        # A new session: the child cannot push input into quire's terminal (TIOCSTI).
        "--new-session",
        *_filesystem(install, read_only),
        "--clearenv",
        *("--setenv", "PYTHONPATH", str(install.pythonpath)),
        *(arg for name, value in env.items() for arg in ("--setenv", name, value)),
        "--",
        *argv,
    ]


def _filesystem(install: PythonInstall, read_only: Sequence[Path]) -> list[str]:
    """The mount operations, in bwrap's order: the private /tmp, binds, then what hides or
    empties parts of them, then everything read-only but /tmp."""
    # /tmp first: binds below it (quire installed from a clone under /tmp) stay visible.
    args: list[str] = ["--tmpfs", "/tmp"]
    system: list[Path] = []
    for name in _SYSTEM_LIBS:
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
            system.append(path)
    python = [p for p in install.binds if not _inside(p, system)]
    for path in _outermost(python):
        args += ["--ro-bind", str(path), str(path)]
    # A site-packages dir a bind shows (the base install's, Debian's dist-packages) is
    # replaced by an empty one: the job host gets the stdlib and quire, nothing installed.
    hidden = [p for p in install.hidden if _inside(p, [*system, *python])]
    for path in hidden:
        args += ["--tmpfs", str(path)]
    # After the hiding: quire may itself live in one of those site-packages.
    for path in (install.package, *read_only):
        args += ["--ro-bind", str(path), str(path)]
    args += ["--dev", "/dev", "--proc", "/proc", "--chdir", "/tmp"]
    for path in hidden:
        args += ["--remount-ro", str(path)]
    # The root bwrap builds is a writable tmpfs; only /tmp stays writable.
    args += ["--remount-ro", "/"]
    return args


def _existing(paths: Iterable[Path]) -> list[Path]:
    return [p for p in dict.fromkeys(paths) if p.exists()]


def _inside(path: Path, dirs: Iterable[Path]) -> bool:
    return any(path == d or d in path.parents for d in dirs)


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """`paths` without those another one already contains (lib-dynload in the stdlib)."""
    return [p for p in paths if not _inside(p, [q for q in paths if q != p])]


def _env() -> str:
    """`env`, to start bwrap with an empty environment (coreutils: always there)."""
    try:
        return process.find_program("env")
    except ProgramNotFound:
        return "/usr/bin/env"


def _bwrap() -> str:
    try:
        return process.find_program("bwrap")
    except ProgramNotFound as exc:
        raise SandboxUnavailable(
            "the sandbox needs bubblewrap, which is not installed (no `bwrap` on PATH):"
            f" install it (`apt-get install bubblewrap`). {_UNSANDBOXED}"
        ) from exc


# What the probe found, per bwrap binary: None when the sandbox works, else why not.
_probed: dict[str, str | None] = {}


def check_available() -> None:
    """Start the sandbox once (quire's Python importing quire in it) and raise
    `SandboxUnavailable` with the reason if it cannot run here. The answer is kept
    for the rest of the process."""
    bwrap = _bwrap()
    if bwrap not in _probed:
        _probed[bwrap] = _probe()
    problem = _probed[bwrap]
    if problem is not None:
        raise SandboxUnavailable(f"{problem} {_UNSANDBOXED}")


def _probe() -> str | None:
    argv = wrap([str(interpreter()), "-c", "import quire"], env={})
    try:
        done = process.run(argv)
    except ProgramNotFound as exc:  # present but not executable, say
        return f"bubblewrap cannot be started: {exc}."
    if done.ok:
        return None
    why = done.stderr_tail(5) or f"exit status {done.exit}"
    return f"bubblewrap cannot build the sandbox here: {why}.{_userns_hint()}"


def _userns_hint() -> str:
    """The sysctls that turn unprivileged user namespaces off, with their values here."""
    found = []
    for name in (
        "kernel.unprivileged_userns_clone",  # Debian's switch: 0 is off
        "user.max_user_namespaces",  # 0 is off
        "kernel.apparmor_restrict_unprivileged_userns",  # Ubuntu 24.04: 1 is off
    ):
        try:
            value = Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError:
            continue
        found.append(f"{name} = {value}")
    listed = "; ".join(found) or "none of them is present here"
    return (
        " Without root, bubblewrap needs unprivileged user namespaces: check the sysctls"
        f" kernel.unprivileged_userns_clone and user.max_user_namespaces ({listed})."
    )
