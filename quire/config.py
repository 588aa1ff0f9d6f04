"""The global config file: `$QUIRE_CONFIG` or `$XDG_CONFIG_HOME/quire/config.toml`.

```toml
[secrets]
github_token = { file = "/run/secrets/github_token" }   # trailing newline stripped
pypi_token = { env = "PYPI_TOKEN" }
plain_one = "hunter2"
deploy_key = { file = "/run/secrets/key", repos = ["proj", "infra-*"] }
scoped_one = { value = "hunter3", repos = ["proj-1a2b3c4d"] }
# repos: globs over the repositories that may read the secret (default: every one),
# each matched against the store name (proj-1a2b3c4d) and the folder name (proj)

[docker]
cpus = 2            # docker run --cpus
memory = "2g"       # docker run --memory
network = false     # docker run --network none
ceiling = 21600     # seconds the container lives at most (safety net)
labels = { team = "infra" }
workspace = "copy"  # "bind" (mount the local tree) | "copy" (copy it in); default:
                    # copy for tcp:// and ssh:// engines, else bind

[output]
capture_limit = 4194304   # bytes of stdout/stderr kept in ShOutput
outputs_limit = 1048576   # bytes of JSON a job may return as its outputs

[artifacts]
max_size = "1g"           # bytes a run may keep with rt.artifact, all jobs together

[repositories.proj]       # a repository by its folder name (proj.git -> proj), or by
                          # its store name (proj-1a2b3c4d) where two folders share a name
executor = "docker"       # where `quire ci worker` runs its pushes (default: --executor)
url = "ssh://git@githost/proj.git"  # where workers fetch its pushes from, read by the hook
                          # (default: the pushed repository's path, as a file:// URL)
path = "/srv/git/proj.git"  # the repository, for its schedules
schedules = [{ cron = "0 3 * * *", ref = "main" }]   # optional timezone = "Europe/Paris"

[web]
url = "https://ci.example.com"   # the web page's address, for links in notifications
anonymous = "read"        # visitors who have not logged in may read ("read") or not ("none")

[[notify]]                # a webhook: a signed JSON POST (docs/notifications.md)
url = "https://chat.example.com/hooks/quire"
secret = { env = "QUIRE_HOOK_SECRET" }   # or a string, or { file = ... }
on = ["failed", "fixed"]  # the default; or ["all"]
repos = ["proj"]          # globs, as for secrets (default: every repository)

[[notify]]                # an email
email = ["team@example.com"]
smtp = "smtp://mail.example.com:25"
from = "quire@example.com"
```

A missing file means defaults and no secrets; a malformed one raises
`ConfigError` naming the file and the problem (exit 2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from quire import pydantic_plugins
from quire.errors import ConfigError, UnknownSecret
from quire.paths import config_file

pydantic_plugins.disable()


# A repos glob holds what a repository's name can (quire lowercases the folder name and makes
# other characters `-`, see `repo_id`) and glob characters: anything else could never match.
_GLOB = re.compile(r"^[a-z0-9._\-*?\[\]!]+$")
# A store name: the folder name, `-`, 8 hex digits of the git dir's hash (`repo_id`).
_STORE_NAME = re.compile(r"^(?P<folder>.+)-[0-9a-f]{8}$")


def repo_names(repo: str) -> tuple[str, ...]:
    """The names repository `repo` answers to in the config: its store name
    (`proj-1a2b3c4d`) and, less precisely, its folder name (`proj`; `proj.git` -> `proj`)."""
    found = _STORE_NAME.match(repo)
    return (repo, found["folder"]) if found else (repo,)


class SecretSpec(BaseModel):
    """One `[secrets]` entry: a string, or a table with one of `file`, `env` or `value`,
    and `repos`, the globs of the repositories that may read it (absent: every one)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    file: Path | None = None
    env: str | None = None
    value: str | None = None
    repos: tuple[str, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_string_is_a_value(cls, data: object) -> object:
        if isinstance(data, str):
            return {"value": data}
        if not isinstance(data, dict):
            raise ValueError("a secret is a string or a table with file, env or value")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SecretSpec:
        given = [key for key in ("file", "env", "value") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of file, env or value (got {len(given)})")
        return self

    @field_validator("repos", mode="before")
    @classmethod
    def _repos_are_globs(cls, value: object) -> object:
        # An empty list would hide the secret from everyone: refused (`_check_globs`).
        return _check_globs(value)

    def readable_by(self, repo: str) -> bool:
        """Whether a run of repository `repo` (its store name) may read this secret."""
        if self.repos is None:
            return True
        names = repo_names(repo)
        return any(fnmatchcase(name, glob) for glob in self.repos for name in names)


# What docker and podman take for --memory: a number and a unit (b, k, m, g; kb, mib...).
_MEMORY = re.compile(r"^\d+(\.\d+)?\s?([bkmgtp]|[kmgtp]i?b)?$", re.IGNORECASE)


class DockerSettings(BaseModel):
    """Resource limits, labels and the workspace mode of the run's container.

    Checked when the config file is read (exit 2 naming the key), not by
    `docker run` after the image is built.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)
    cpus: float | None = Field(default=None, gt=0)
    memory: str | None = None
    network: bool = True
    labels: dict[str, str] = Field(default_factory=dict)
    # The container's PID 1 sleeps this long at most: a safety net should a
    # runner die without tearing down (reconcile removes such containers too).
    ceiling: int = Field(default=6 * 3600, gt=0)
    # How the tree reaches /work: "bind" mounts the local workspace (the engine must
    # see this machine's files), "copy" copies it into the container. None: copy for
    # tcp:// and ssh:// engines, bind otherwise.
    workspace: Literal["bind", "copy"] | None = None
    # ci.py and the jobs' Python run in a bubblewrap sandbox (docs/security.md). False runs
    # them unsandboxed: only for a worker whose every pusher is trusted.
    sandbox: bool = True

    @field_validator("memory")
    @classmethod
    def _memory_is_a_size(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY.match(value.strip()):
            raise ValueError(
                f"{value!r} is not a memory size: use a number with a unit, e.g. "
                '"512m" or "2g" (b, k, m, g)'
            )
        return None if value is None else value.strip()

    @field_validator("labels")
    @classmethod
    def _labels_are_plain(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or any(ch.isspace() for ch in key):
                raise ValueError(f"label name {key!r} must be non-empty, without '=' or spaces")
        return value


class OutputSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    capture_limit: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A job's returned outputs, as JSON: records stay small and `show` fast.
    outputs_limit: int = Field(default=1024 * 1024, ge=1024)


_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: object) -> int:
    """Bytes from an int or a string with a binary unit ("500m", "1GiB", "2g")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = _SIZE.match(str(value).strip()) if isinstance(value, str) else None
    if found is None:
        raise ValueError(
            f"{value!r} is not a size: use bytes, or a number with a unit, e.g. "
            '"500m" or "1g" (k, m, g, t; powers of 1024)'
        )
    return int(found[1]) * _UNITS[found[2].lower()]


class ArtifactSettings(BaseModel):
    """What runs may keep with `rt.artifact` (`[artifacts]`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    # Bytes of artifacts one run may keep, all jobs together; past it the job fails.
    max_size: int = Field(default=1024**3, ge=0)

    @field_validator("max_size", mode="before")
    @classmethod
    def _a_size(cls, value: object) -> int:
        return parse_size(value)


class JobSettings(BaseModel):
    """How quire ends a job's processes (`[jobs]`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    # Seconds a job's Python and what it started get between SIGTERM and SIGKILL, when
    # the job ends, times out, or the run is interrupted or cancelled.
    term_grace: float = Field(default=5.0, gt=0, le=300)


class Schedule(BaseModel):
    """One entry of `schedules`: run `ref`'s commit at the times of `cron`, read in
    `timezone` (an IANA name; UTC by default)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    cron: str
    ref: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str) -> str:
        from datetime import UTC, datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"cron {value!r} is not a cron line ({exc})") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone_is_known(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r} (an IANA name: Europe/Paris)") from exc
        return value

    @property
    def full_ref(self) -> str:
        """`ref` as a full name: `main` is `refs/heads/main`."""
        return self.ref if self.ref.startswith("refs/") else f"refs/heads/{self.ref}"


class RepositorySettings(BaseModel):
    """Settings of one repository's pushed runs (`[repositories.<name>]`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    executor: Literal["host", "docker"] | None = None
    # Where workers fetch this repository's pushes (git's URL forms: ssh://, https://,
    # file://, host:path); the hook puts it on each queued run (quire.service.queues).
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url_is_one(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.startswith("-")):
            raise ValueError('must be a URL git can fetch from, e.g. "ssh://git@githost/proj.git"')
        return value

    # The repository's git directory: the worker resolves a schedule's ref in it.
    path: Path | None = None
    schedules: list[Schedule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _schedules_need_a_path(self) -> RepositorySettings:
        if self.schedules and self.path is None:
            raise ValueError(
                'schedules need the repository\'s path: add path = "/srv/git/NAME.git"'
            )
        return self


class WebSettings(BaseModel):
    """The web page (`[web]`), as other parts need to know it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    # The page's address as people reach it: notifications link to the run's page.
    url: str | None = None
    # "read": visitors who have not logged in may read every page; "none": they log in first.
    anonymous: Literal["read", "none"] = "read"


def _check_globs(value: object) -> object:
    if not isinstance(value, list) or not value:
        # An empty list would match nothing: more likely a slip than meant, and easy to
        # mistake for "no restriction".
        raise ValueError('repos must be a non-empty list of globs, e.g. repos = ["proj"]')
    for glob in value:
        if not isinstance(glob, str) or not glob:
            raise ValueError(f"repos entry {glob!r} must be a non-empty string")
        if not _GLOB.match(glob) or glob.endswith(".git"):
            raise ValueError(
                f"repos entry {glob!r} can never match: quire names a repository by its "
                "folder, lowercased, other characters made '-', without '.git' (a bare "
                "My Proj.git is my-proj), or by its store name (my-proj-1a2b3c4d)"
            )
    return value


class NotifyTarget(BaseModel):
    """One `[[notify]]` entry: a webhook (`url`, signed with `secret`) or an email
    (`email`, through `smtp`, from `from`), for the runs of `repos` that `on` chooses."""

    model_config = ConfigDict(extra="forbid", defer_build=True, populate_by_name=True)
    url: str | None = None
    secret: SecretSpec | None = None
    email: list[str] | None = None
    smtp: str = "smtp://localhost:25"
    sender: str = Field(default="quire@localhost", alias="from")
    on: tuple[Literal["failed", "fixed", "all"], ...] = ("failed", "fixed")
    repos: tuple[str, ...] | None = None

    @field_validator("repos", mode="before")
    @classmethod
    def _repos_are_globs(cls, value: object) -> object:
        return _check_globs(value)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"url {value!r} must be an http:// or https:// URL")
        return value

    @field_validator("smtp")
    @classmethod
    def _smtp_is_smtp(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme != "smtp" or not parts.hostname:
            raise ValueError(f"smtp {value!r} must be smtp://host:port")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> NotifyTarget:
        if (self.url is None) == (self.email is None):
            raise ValueError("give either url (a webhook) or email (a list of addresses)")
        if self.email is not None and not self.email:
            raise ValueError("email must list at least one address")
        return self

    def wants(self, repo: str) -> bool:
        """Whether runs of repository `repo` (its store name) are notified here."""
        if self.repos is None:
            return True
        names = repo_names(repo)
        return any(fnmatchcase(name, glob) for glob in self.repos for name in names)

    def secret_value(self) -> str | None:
        """The signing secret (None: unsigned); raises `ConfigError` if it cannot be read."""
        if self.secret is None:
            return None
        found = Secrets()
        _resolve("notify", self.secret, found)
        if "notify" in found.unavailable:
            raise ConfigError(f"the secret of notify {self.url}: {found.unavailable['notify']}")
        return found.values["notify"]


class ServerSettings(BaseModel):
    """Where quire keeps what machines share (`[server]`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    # postgresql://...: the run queue on PostgreSQL (quire.service.pgqueue); None: SQLite in
    # the state directory. QUIRE_DATABASE_URL overrides it (quire.service.queues).
    database: str | None = None

    @field_validator("database")
    @classmethod
    def _database_is_postgresql(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value


class ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    server: ServerSettings = Field(default_factory=ServerSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    secrets: dict[str, SecretSpec] = Field(default_factory=dict)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    repositories: dict[str, RepositorySettings] = Field(default_factory=dict)
    notify: list[NotifyTarget] = Field(default_factory=list)


@dataclass
class Secrets:
    """The secrets one repository may read (or, without `repo`, every configured one),
    resolved once; values are never shown anywhere.

    A secret whose file or variable is missing does not fail the run: it
    fails only the job that asks for it, with the reason. A secret scoped to
    other repositories is not here at all, so it is neither answered nor masked.
    """

    values: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    repo: str | None = None

    def get(self, name: str) -> str:
        """The value of secret `name`; raises `UnknownSecret` if it has none."""
        if name in self.values:
            return self.values[name]
        if name in self.unavailable:
            raise UnknownSecret(f"secret {name!r} is configured but {self.unavailable[name]}")
        known = ", ".join(sorted(self.values) + sorted(self.unavailable)) or "none"
        if self.repo is None:
            raise UnknownSecret(
                f"unknown secret {name!r} (configured: {known}; add it under [secrets] in "
                f"{config_file()})"
            )
        # The same words whether or not the name exists for other repositories: which
        # secrets others may read is none of this one's business.
        globs = " or ".join(repo_names(self.repo))
        raise UnknownSecret(
            f"unknown secret {name!r} (repository {self.repo} may read: {known}; add it "
            f"under [secrets] in {config_file()}, and if it has repos, a glob matching {globs})"
        )


@dataclass
class Config:
    """What the rest of quire reads from the config file."""

    secret_specs: dict[str, SecretSpec] = field(default_factory=dict)
    # Without a file, the settings are the models' defaults: constructed, not validated, so
    # a run without a config file never builds their validators (~15 ms).
    docker: DockerSettings = field(default_factory=DockerSettings.model_construct)
    output: OutputSettings = field(default_factory=OutputSettings.model_construct)
    jobs: JobSettings = field(default_factory=JobSettings.model_construct)
    artifacts: ArtifactSettings = field(default_factory=ArtifactSettings.model_construct)
    repositories: dict[str, RepositorySettings] = field(default_factory=dict)
    server: ServerSettings = field(default_factory=ServerSettings.model_construct)
    web: WebSettings = field(default_factory=WebSettings.model_construct)
    notify: list[NotifyTarget] = field(default_factory=list)
    path: Path | None = None
    # Resolved once per repository, so a run's masking and its jobs see the same values.
    _resolved: dict[str | None, Secrets] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def secrets(self) -> Secrets:
        """Every configured secret, whichever repositories may read it. A run must use
        `secrets_for`: this is for code that predates `repos`."""
        return self._secrets(None)

    def secrets_for(self, repo: str) -> Secrets:
        """The secrets a run of repository `repo` (its store name, `proj-1a2b3c4d`) may
        read: those without `repos` and those with a glob matching its store name or its
        folder name. Only those are resolved (files read, variables looked up)."""
        return self._secrets(repo)

    def _secrets(self, repo: str | None) -> Secrets:
        secrets = self._resolved.get(repo)
        if secrets is None:
            secrets = Secrets(repo=repo)
            for name, spec in self.secret_specs.items():
                if repo is None or spec.readable_by(repo):
                    _resolve(name, spec, secrets)
            self._resolved[repo] = secrets
        return secrets

    def executor_for(self, repo: str) -> str | None:
        """The executor configured for repository `repo` (its store name `proj-1a2b3c4d`,
        or, less precisely, its folder name `proj`), if any."""
        for name in repo_names(repo):
            if name in self.repositories:
                return self.repositories[name].executor
        return None


def _resolve(name: str, spec: SecretSpec, secrets: Secrets) -> None:
    if spec.value is not None:
        secrets.values[name] = spec.value
    elif spec.file is not None:
        try:
            secrets.values[name] = spec.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            secrets.unavailable[name] = f"its file {spec.file} cannot be read ({exc.strerror})"
    elif spec.env is not None and spec.env in os.environ:
        secrets.values[name] = os.environ[spec.env]
    else:
        secrets.unavailable[name] = f"the environment variable {spec.env} is not set"


def load_config(path: Path | None = None) -> Config:
    """Read the config file (default: `paths.config_file()`); raises `ConfigError`."""
    path = path or config_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()  # the defaults, no model built (see Config)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    import tomllib  # only when there is a file: most runs have none

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        parsed = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"config file {path} is invalid: {problems}") from exc
    return Config(
        secret_specs=parsed.secrets,
        docker=parsed.docker,
        output=parsed.output,
        jobs=parsed.jobs,
        artifacts=parsed.artifacts,
        repositories=parsed.repositories,
        server=parsed.server,
        web=parsed.web,
        notify=parsed.notify,
        path=path,
    )
