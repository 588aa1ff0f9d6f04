"""The pipeline: `.quire/ci.py` loaded from a revision into a validated job graph.

ci.py is Python executed in a fresh module namespace inside quire's own
process. `@job(...)` registers functions with the loader that is running;
the loader then checks the whole graph and reports every problem at once,
each with its line in ci.py:

- a job id that is empty or contains `/` (ids are path segments);
- a duplicate id;
- no inputs;
- an input that is neither a job nor a known source (`quire/push`, `quire/schedule`);
- cycles, naming every member;
- jobs that no source reaches.

A syntax error or an exception while loading is a `PipelineError` with the
file and line too, never a traceback.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from quire.errors import PipelineError, PipelineProblem, UsageError

if TYPE_CHECKING:
    import importlib.abc

    from quire.jobhost.runtime import Runtime

PIPELINE_FILE = ".quire/ci.py"
PUSH_SOURCE = "quire/push"  # a push (and a re-run, or a run by hand, of a ref)
SCHEDULE_SOURCE = "quire/schedule"  # a scheduled run (`schedules` in the config)
SOURCES = (PUSH_SOURCE, SCHEDULE_SOURCE)

JobFunction = Callable[["Runtime"], Mapping[str, Any] | None]
F = TypeVar("F", bound=Callable[..., Any])


class Skip(Exception):
    """Raise inside a job to mark it skipped (its dependents are skipped too)."""


# NamedTuples and plain classes, not dataclasses: this module is what the job host
# imports at every run's start, and `dataclasses` costs it ~7 ms of imports (inspect).


class JobDef(NamedTuple):
    """One registered job."""

    id: str
    inputs: tuple[str, ...]
    func: JobFunction | None  # None in quire: the function lives in the job host
    line: int | None
    timeout: float | None = None


class CacheDef(NamedTuple):
    """A named cache kept between runs, mounted at `path` in the run's container."""

    name: str
    path: str
    line: int | None


class Registration:
    """What one `@job` or `cache()` call registered, and what is wrong with it."""

    def __init__(
        self,
        job: JobDef | None,
        problems: list[PipelineProblem] | None = None,
        cache: CacheDef | None = None,
    ) -> None:
        self.job = job
        self.problems = problems if problems is not None else []
        self.cache = cache


_collector: list[Registration] | None = None


def _caller_line() -> int | None:
    frame = sys._getframe(2)
    return frame.f_lineno if frame.f_code.co_filename == PIPELINE_FILE else None


def job(
    id: str | None = None,
    *,
    inputs: Sequence[str] | None = None,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as a job.

    `id` defaults to the function's name; `inputs` lists the jobs (or
    sources such as `quire/push`) it runs after; `timeout` (seconds) fails
    the job when it runs longer.
    """
    line = _caller_line()
    registration = Registration(job=None)
    if _collector is not None:
        _collector.append(registration)

    if callable(id):
        registration.problems.append(
            PipelineProblem("@job needs arguments: write @job(inputs=[...])", line)
        )
        return id

    def register(func: F) -> F:
        job_id = func.__name__ if id is None else id
        registration.problems.extend(_check_arguments(job_id, inputs, timeout, line))
        names = tuple(inputs) if isinstance(inputs, list | tuple) else ()
        registration.job = JobDef(str(job_id), names, func, line, timeout)
        return func

    return register


# Job ids name directories and log lines: a name, never a path or a line break.
JOB_ID_MAX = 64
JOB_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{JOB_ID_MAX - 1}}}")


def cache(name: str, path: str) -> None:
    """Keep the directory `path` between runs of this repository, as the cache `name`.

    Call it at the top level of ci.py: `cache("pip", "/root/.cache/pip")`. In
    docker runs the cache is mounted at `path` in the run's container; on the
    host, `path` is the host's own directory and quire does nothing with it.
    """
    line = _caller_line()
    registration = Registration(job=None, cache=CacheDef(str(name), str(path), line))
    if not isinstance(name, str) or not JOB_ID.fullmatch(name):
        registration.problems.append(
            PipelineProblem(
                f"cache name {name!r} is not a valid name: use letters, digits, '.', '_' and "
                f"'-', starting with a letter or digit, at most {JOB_ID_MAX} characters",
                line,
            )
        )
    if not isinstance(path, str) or not path.startswith("/"):
        registration.problems.append(
            PipelineProblem(f"cache {name!r}: path must be absolute, got {path!r}", line)
        )
    if _collector is not None:
        _collector.append(registration)


def _check_arguments(
    job_id: object, inputs: object, timeout: object, line: int | None
) -> Iterator[PipelineProblem]:
    if not isinstance(job_id, str) or not job_id:
        yield PipelineProblem(f"job id must be a non-empty string, got {job_id!r}", line)
    elif "/" in job_id:
        yield PipelineProblem(f"job id {job_id!r} contains '/' (reserved for sources)", line)
    elif not JOB_ID.fullmatch(job_id):
        yield PipelineProblem(
            f"job id {job_id[:80]!r} is not a valid name: use letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most {JOB_ID_MAX} characters",
            line,
        )
    if inputs is None or (isinstance(inputs, list | tuple) and not inputs):
        yield PipelineProblem(
            f"job {job_id!r} has no inputs (add inputs=['quire/push'] to run it on every push)",
            line,
        )
    elif not isinstance(inputs, list | tuple) or not all(isinstance(i, str) for i in inputs):
        yield PipelineProblem(f"job {job_id!r}: inputs must be a list of job ids", line)
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        yield PipelineProblem(f"job {job_id!r}: timeout must be a positive number of seconds", line)


class Pipeline:
    """A validated job graph; `order` is the order jobs run in."""

    def __init__(
        self,
        jobs: dict[str, JobDef],
        order: list[str],
        caches: dict[str, CacheDef] | None = None,
        modules: dict[str, bytes] | None = None,
    ) -> None:
        self.jobs = jobs
        self.order = order
        self.caches: dict[str, CacheDef] = caches if caches is not None else {}
        # The other .py files under .quire/ (path below it -> text): `pipeline_modules`.
        self.modules: dict[str, bytes] = modules if modules is not None else {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pipeline):
            return NotImplemented
        mine = (self.jobs, self.order, self.caches, self.modules)
        return mine == (other.jobs, other.order, other.caches, other.modules)

    def __repr__(self) -> str:
        return f"Pipeline(order={self.order!r}, caches={list(self.caches)!r})"

    def subset(self, targets: Sequence[str]) -> Pipeline:
        """The pipeline cut down to `targets` and every job they need, in the same order;
        raises `UsageError` naming an unknown job (with the closest id)."""
        unknown = [name for name in targets if name not in self.jobs]
        if unknown:
            close = closest(unknown[0], list(self.jobs))
            hint = f" (did you mean {close!r}?)" if close else ""
            known = ", ".join(self.order)
            raise UsageError(
                f"no job {unknown[0]!r} in {PIPELINE_FILE}{hint}; its jobs are: {known}"
            )
        wanted = set(targets)
        for name in targets:
            wanted |= {dep for dep in self.ancestors(name) if dep in self.jobs}
        return Pipeline(
            jobs={name: defined for name, defined in self.jobs.items() if name in wanted},
            order=[name for name in self.order if name in wanted],
            caches=self.caches,
            modules=self.modules,
        )

    def for_source(self, source: str) -> Pipeline:
        """The jobs a run offering `source` runs, in the same order: a job that names
        sources runs when `source` is one of them, and only when every job it takes is
        in the run too; a job that names none follows its inputs. A nightly job
        (`inputs=["quire/schedule"]`) is left out of a push's run, a push's jobs out
        of a scheduled run; a job may take both."""
        kept: list[str] = []
        for name in self.order:  # inputs come first in `order`
            inputs = self.jobs[name].inputs
            sources = [i for i in inputs if i in SOURCES]
            others = [i for i in inputs if i not in SOURCES]
            if (not sources or source in sources) and all(i in kept for i in others):
                kept.append(name)
        return Pipeline(
            jobs={name: self.jobs[name] for name in kept},
            order=kept,
            caches=self.caches,
            modules=self.modules,
        )

    def ancestors(self, job_id: str) -> set[str]:
        """Every job and source `job_id` depends on, directly or not."""
        seen: set[str] = set()
        stack = list(self.jobs[job_id].inputs)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                if name in self.jobs:
                    stack.extend(self.jobs[name].inputs)
        return seen


@contextmanager
def _collecting() -> Iterator[list[Registration]]:
    global _collector
    previous, _collector = _collector, []
    try:
        yield _collector
    finally:
        _collector = previous


class _PipelineModules:
    # A meta path finder and loader by shape, not by importlib.abc's classes: importing those
    # costs the job host ~10 ms at every start.
    """Imports of the modules beside ci.py (`.quire/helpers.py`, `.quire/lib/__init__.py`),
    served from the texts read at the run's revision, never from the working tree."""

    def __init__(self, sources: Mapping[str, bytes]) -> None:
        self.sources = dict(sources)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        for file, package in (
            (f"{fullname.replace('.', '/')}.py", False),
            (f"{fullname.replace('.', '/')}/__init__.py", True),
        ):
            if file in self.sources:
                loader = cast("importlib.abc.Loader", self)  # a loader by shape
                spec = importlib.util.spec_from_loader(fullname, loader, is_package=package)
                if spec is not None:
                    spec.origin = f".quire/{file}"
                    spec.has_location = True
                return spec
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None and spec.origin is not None
        source = self.sources[spec.origin.removeprefix(".quire/")]
        exec(compile(source, spec.origin, "exec"), module.__dict__)


@contextmanager
def pipeline_modules(sources: Mapping[str, bytes]) -> Iterator[None]:
    """While inside, `import helpers` in ci.py (or in a job) finds `.quire/helpers.py` of
    the run's revision; afterwards no module of it is left in `sys.modules`."""
    if not sources:
        yield
        return
    finder = _PipelineModules(sources)
    before = set(sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            spec = getattr(sys.modules[name], "__spec__", None)
            if spec is not None and spec.loader is finder:
                del sys.modules[name]


def load_pipeline(
    source: bytes | str, modules: Mapping[str, bytes] | None = None, *, keep_modules: bool = False
) -> Pipeline:
    """Execute ci.py's text and validate its jobs; raises `PipelineError`.

    `modules` are the other `.py` files under `.quire/` (path below `.quire/` ->
    text), importable from ci.py and its jobs: while it loads, or from then on
    with `keep_modules` (the job host, whose jobs may import them late)."""
    if keep_modules and modules:
        sys.meta_path.insert(0, _PipelineModules(modules))
        modules = None
    try:
        code = compile(source, PIPELINE_FILE, "exec")
    except SyntaxError as exc:
        text = f"syntax error: {exc.msg}"
        raise PipelineError(PIPELINE_FILE, [PipelineProblem(text, exc.lineno)]) from None
    except ValueError as exc:  # e.g. NUL bytes
        raise PipelineError(PIPELINE_FILE, [PipelineProblem(str(exc), None)]) from None
    namespace: dict[str, Any] = {"__name__": "quire_pipeline", "__file__": PIPELINE_FILE}
    with _collecting() as registrations, pipeline_modules(modules or {}):
        try:
            exec(code, namespace)
        except (Exception, SystemExit) as exc:  # sys.exit() in ci.py must not end quire
            line = pipeline_line(exc)
            problem = PipelineProblem(f"{type(exc).__name__} while loading: {exc}", line)
            raise PipelineError(PIPELINE_FILE, [problem]) from None
    pipeline = validate(registrations)
    pipeline.modules = dict(modules or {})
    return pipeline


def pipeline_line(exc: BaseException) -> int | None:
    """The innermost line of ci.py in `exc`'s traceback."""
    import traceback  # only when something failed: ~10 ms of imports

    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == PIPELINE_FILE:
            line = frame.lineno
    return line


def validate(registrations: list[Registration]) -> Pipeline:
    """Check the whole graph; raises one `PipelineError` listing every problem."""
    problems: list[PipelineProblem] = []
    jobs: dict[str, JobDef] = {}
    caches: dict[str, CacheDef] = {}
    for registration in registrations:
        problems.extend(registration.problems)
        if registration.cache is not None and not registration.problems:
            named = registration.cache
            if named.name in caches:
                first = caches[named.name].line
                text = f"duplicate cache {named.name!r} (first defined on line {first})"
                problems.append(PipelineProblem(text, named.line))
            caches[named.name] = named
        defined = registration.job
        if defined is None:
            continue
        if defined.id in jobs:
            first = jobs[defined.id].line
            problems.append(
                PipelineProblem(
                    f"duplicate job id {defined.id!r} (first defined on line {first})", defined.line
                )
            )
            continue
        jobs[defined.id] = defined
    problems.extend(_unknown_inputs(jobs))
    cyclic = _cycles(jobs)
    for members in cyclic:
        names = " -> ".join([*members, members[0]])
        lines = ", ".join(f"{m} (line {jobs[m].line})" for m in members)
        problems.append(PipelineProblem(f"cycle: {names}; members: {lines}", jobs[members[0]].line))
    in_cycle = {m for members in cyclic for m in members}
    problems.extend(_unreachable(jobs, in_cycle))
    if not jobs and not problems:
        problems.append(PipelineProblem("defines no jobs (decorate a function with @job)", None))
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise PipelineError(PIPELINE_FILE, problems)
    return Pipeline(jobs=jobs, order=_topological(jobs), caches=caches)


def closest(name: str, known: Sequence[str]) -> str | None:
    """The known name `name` was most likely meant as (typos, swapped letters), or None."""
    for candidate in known:  # the same letters in another order: `tset` for `tests`
        if sorted(candidate) == sorted(name) or sorted(candidate) == sorted(name + "s"):
            return candidate
    import difflib

    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def _unknown_inputs(jobs: dict[str, JobDef]) -> Iterator[PipelineProblem]:
    known = list(jobs) + list(SOURCES)
    for defined in jobs.values():
        for name in defined.inputs:
            if name in jobs or name in SOURCES:
                continue
            close = closest(name, known)
            hint = f" (did you mean {close!r}?)" if close else ""
            yield PipelineProblem(
                f"job {defined.id!r} has unknown input {name!r}{hint}", defined.line
            )


def _cycles(jobs: dict[str, JobDef]) -> list[list[str]]:
    """Strongly connected components that form cycles (Tarjan), members in declaration order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    order = {name: i for i, name in enumerate(jobs)}

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for dep in jobs[name].inputs:
            if dep not in jobs:
                continue
            if dep not in index:
                visit(dep)
                low[name] = min(low[name], low[dep])
            elif dep in on_stack:
                low[name] = min(low[name], index[dep])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1 or name in jobs[name].inputs:
                found.append(sorted(component, key=order.__getitem__))

    for name in jobs:
        if name not in index:
            visit(name)
    return found


def _unreachable(jobs: dict[str, JobDef], in_cycle: set[str]) -> Iterator[PipelineProblem]:
    reached: set[str] = set()
    changed = True
    while changed:
        changed = False
        for defined in jobs.values():
            if defined.id in reached:
                continue
            if any(i in SOURCES or i in reached for i in defined.inputs):
                reached.add(defined.id)
                changed = True
    for defined in jobs.values():
        # A job in a cycle, without inputs, or with an unknown input already has
        # its own problem; saying "unreachable" too would only be noise.
        has_own_problem = (
            defined.id in in_cycle
            or not defined.inputs
            or any(i not in jobs and i not in SOURCES for i in defined.inputs)
        )
        if defined.id not in reached and not has_own_problem:
            yield PipelineProblem(
                f"job {defined.id!r} is not reachable from any source "
                f"(none of its inputs leads to {' or '.join(SOURCES)})",
                defined.line,
            )


def _topological(jobs: dict[str, JobDef]) -> list[str]:
    """Kahn's order, ties broken by declaration order."""
    done: list[str] = []
    remaining = list(jobs)
    while remaining:
        for name in remaining:
            if all(i in SOURCES or i in done for i in jobs[name].inputs):
                done.append(name)
                remaining.remove(name)
                break
    return done
