"""Loading `.quire/ci.py` from its text: every validation rule, line numbers, and the run order."""

from __future__ import annotations

import sys
import textwrap

import pytest

from quire.ci.pipeline import PIPELINE_FILE, Pipeline, load_pipeline
from quire.errors import PipelineError, UsageError


def load(source: str) -> Pipeline:
    return load_pipeline(textwrap.dedent(source).lstrip("\n"))


def problems_of(source: str) -> list[tuple[int | None, str]]:
    """(line, text) of every problem `source` has; fails if it loads cleanly."""
    with pytest.raises(PipelineError) as caught:
        load(source)
    assert caught.value.file == PIPELINE_FILE
    return [(p.line, p.text) for p in caught.value.problems]


def test_valid_pipeline_loads_with_its_jobs_and_inputs() -> None:
    pipeline = load(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def lint(rt):
            pass

        @job("unit-tests", inputs=["lint"])
        def unit(rt):
            return {"ok": True}
        """
    )
    assert list(pipeline.jobs) == ["lint", "unit-tests"]
    assert pipeline.jobs["unit-tests"].inputs == ("lint",)
    assert pipeline.jobs["unit-tests"].func.__name__ == "unit"
    assert pipeline.jobs["lint"].line == 3
    assert pipeline.jobs["unit-tests"].line == 7


def test_empty_inputs_is_a_problem_on_the_decorator_line() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=[])
        def lonely(rt):
            pass
        """
    )
    assert len(found) == 1
    line, text = found[0]
    assert line == 3
    assert "'lonely' has no inputs" in text


def test_missing_inputs_argument_is_a_problem() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job()
        def lonely(rt):
            pass
        """
    )
    assert [(line, "no inputs" in text) for line, text in found] == [(3, True)]


def test_slash_in_job_id_is_a_problem() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job("build/linux", inputs=["quire/push"])
        def build(rt):
            pass
        """
    )
    assert len(found) == 1
    assert found[0][0] == 3
    assert "'build/linux' contains '/'" in found[0][1]


def test_job_ids_that_are_not_names_are_each_a_problem_with_their_line() -> None:
    long_id = "x" * 65
    found = problems_of(
        f"""
        from quire.ci import job

        @job("..", inputs=["quire/push"])
        def up(rt):
            pass

        @job(".", inputs=["quire/push"])
        def here(rt):
            pass

        @job("a\\nb", inputs=["quire/push"])
        def newline(rt):
            pass

        @job("a\\x00b", inputs=["quire/push"])
        def nul(rt):
            pass

        @job("{long_id}", inputs=["quire/push"])
        def long(rt):
            pass

        @job("-flag", inputs=["quire/push"])
        def dash(rt):
            pass

        @job("{"y" * 64}", inputs=["quire/push"])
        def longest_allowed(rt):
            pass

        @job("Unit_tests.v2-1", inputs=["quire/push"])
        def fine(rt):
            pass
        """
    )
    assert [line for line, _ in found] == [3, 7, 11, 15, 19, 23]
    assert all("is not a valid name" in text for _, text in found)
    assert "at most 64 characters" in found[0][1]


def test_empty_job_id_is_a_problem() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job("", inputs=["quire/push"])
        def nameless(rt):
            pass
        """
    )
    assert len(found) == 1
    assert found[0][0] == 3
    assert "non-empty string" in found[0][1]


def test_duplicate_id_names_both_lines() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def test(rt):
            pass

        @job("test", inputs=["quire/push"])
        def test_again(rt):
            pass
        """
    )
    assert len(found) == 1
    line, text = found[0]
    assert line == 7
    assert "duplicate job id 'test'" in text
    assert "line 3" in text


def test_unknown_input_typo_of_a_source_is_caught_with_a_hint() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/posh"])
        def lint(rt):
            pass
        """
    )
    assert len(found) == 1
    line, text = found[0]
    assert line == 3
    assert "unknown input 'quire/posh'" in text
    assert "did you mean 'quire/push'" in text


def test_unknown_input_naming_no_job_is_caught() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def lint(rt):
            pass

        @job(inputs=["lnt"])
        def unit(rt):
            pass
        """
    )
    assert len(found) == 1
    line, text = found[0]
    assert line == 7
    assert "job 'unit' has unknown input 'lnt'" in text
    assert "did you mean 'lint'" in text


def test_unknown_source_in_reserved_namespace_is_caught() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/tag"])
        def release(rt):
            pass
        """
    )
    assert len(found) == 1
    assert "unknown input 'quire/tag'" in found[0][1]


def test_cycle_names_every_member_with_its_line() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def root(rt):
            pass

        @job(inputs=["root", "c"])
        def a(rt):
            pass

        @job(inputs=["a"])
        def b(rt):
            pass

        @job(inputs=["b"])
        def c(rt):
            pass
        """
    )
    assert len(found) == 1
    line, text = found[0]
    assert line == 7
    assert "cycle: a -> b -> c -> a" in text
    for member, member_line in (("a", 7), ("b", 11), ("c", 15)):
        assert f"{member} (line {member_line})" in text
    assert "root" not in text


def test_job_that_is_its_own_input_is_a_cycle() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/push", "again"])
        def again(rt):
            pass
        """
    )
    assert len(found) == 1
    assert found[0][0] == 3
    assert "cycle: again -> again" in found[0][1]


def test_two_separate_cycles_are_both_reported() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["b"])
        def a(rt):
            pass

        @job(inputs=["a"])
        def b(rt):
            pass

        @job(inputs=["d"])
        def c(rt):
            pass

        @job(inputs=["c"])
        def d(rt):
            pass
        """
    )
    cycles = [(line, text) for line, text in found if text.startswith("cycle:")]
    assert [line for line, _ in cycles] == [3, 11]
    assert "a -> b -> a" in cycles[0][1]
    assert "c -> d -> c" in cycles[1][1]


def test_job_reachable_only_through_a_cycle_is_unreachable() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["y"])
        def x(rt):
            pass

        @job(inputs=["x"])
        def y(rt):
            pass

        @job(inputs=["x"])
        def after(rt):
            pass
        """
    )
    texts = dict(found)
    assert "cycle: x -> y -> x" in texts[3]
    assert "job 'after' is not reachable from any source" in texts[11]


def test_several_problems_come_in_one_error_each_with_its_line() -> None:
    source = """
        from quire.ci import job

        @job(inputs=[])
        def empty(rt):
            pass

        @job("a/b", inputs=["quire/push"])
        def slash(rt):
            pass

        @job(inputs=["quire/posh"])
        def typo(rt):
            pass

        @job(inputs=["quire/push"])
        def dup(rt):
            pass

        @job("dup", inputs=["quire/push"])
        def dup_again(rt):
            pass

        @job(inputs=["y"])
        def x(rt):
            pass

        @job(inputs=["x"])
        def y(rt):
            pass
        """
    with pytest.raises(PipelineError) as caught:
        load(source)
    error = caught.value
    lines = [p.line for p in error.problems]
    assert lines == [3, 7, 11, 19, 23]
    message = str(error)
    assert message.startswith("invalid pipeline, 5 problems:")
    assert ".quire/ci.py:3: job 'empty' has no inputs" in message
    assert ".quire/ci.py:7: job id 'a/b' contains '/'" in message
    assert ".quire/ci.py:11: job 'typo' has unknown input 'quire/posh'" in message
    assert ".quire/ci.py:19: duplicate job id 'dup'" in message
    assert ".quire/ci.py:23: cycle: x -> y -> x" in message


def test_syntax_error_is_a_pipeline_error_with_its_line() -> None:
    source = "from quire.ci import job\n\n\ndef broken(:\n    pass\n"
    with pytest.raises(PipelineError) as caught:
        load_pipeline(source)
    assert [p.line for p in caught.value.problems] == [4]
    assert str(caught.value).startswith("invalid pipeline: .quire/ci.py:4: syntax error")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_exception_while_loading_gives_innermost_ci_line_and_no_traceback() -> None:
    found = problems_of(
        """
        from quire.ci import job

        def helper():
            raise ValueError("no config for linux")

        helper()
        """
    )
    assert found == [(4, "ValueError while loading: no config for linux")]


def test_exception_while_loading_is_not_chained_to_the_original() -> None:
    with pytest.raises(PipelineError) as caught:
        load_pipeline("import no_such_module_for_quire_tests\n")
    assert caught.value.problems[0].line == 1
    assert "ModuleNotFoundError while loading" in caught.value.problems[0].text
    assert "Traceback" not in str(caught.value)
    assert caught.value.__suppress_context__


def test_sys_exit_while_loading_is_a_pipeline_error() -> None:
    found = problems_of(
        """
        import sys

        sys.exit(3)
        """
    )
    assert len(found) == 1
    assert found[0][0] == 3
    assert "SystemExit" in found[0][1]


def test_bare_job_decorator_without_parentheses_is_a_problem() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job
        def lint(rt):
            pass
        """
    )
    assert len(found) == 1
    assert found[0][0] == 3
    assert "@job needs arguments" in found[0][1]


def test_file_without_jobs_is_a_problem() -> None:
    found = problems_of("x = 1\n")
    assert found == [(None, "defines no jobs (decorate a function with @job)")]


def test_non_list_inputs_is_a_problem() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs="quire/push")
        def lint(rt):
            pass
        """
    )
    assert len(found) == 1
    assert found[0][0] == 3
    assert "inputs must be a list" in found[0][1]


def test_bad_timeout_is_a_problem() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/push"], timeout=0)
        def lint(rt):
            pass
        """
    )
    assert len(found) == 1
    assert "timeout must be a positive number" in found[0][1]


def test_order_is_topological_with_ties_in_declaration_order() -> None:
    pipeline = load(
        """
        from quire.ci import job

        @job(inputs=["build"])
        def test(rt):
            pass

        @job(inputs=["quire/push"])
        def zeta(rt):
            pass

        @job(inputs=["quire/push"])
        def build(rt):
            pass

        @job(inputs=["test", "zeta"])
        def deploy(rt):
            pass

        @job(inputs=["quire/push"])
        def alpha(rt):
            pass
        """
    )
    # zeta and build are ready first (declaration order between them), then
    # test becomes ready and is declared before alpha.
    assert pipeline.order == ["zeta", "build", "test", "deploy", "alpha"]


def test_every_job_comes_after_all_of_its_inputs() -> None:
    pipeline = load(
        """
        from quire.ci import job

        @job(inputs=["c", "b"])
        def d(rt):
            pass

        @job(inputs=["b"])
        def c(rt):
            pass

        @job(inputs=["a"])
        def b(rt):
            pass

        @job(inputs=["quire/push"])
        def a(rt):
            pass
        """
    )
    assert pipeline.order == ["a", "b", "c", "d"]
    position = {name: i for i, name in enumerate(pipeline.order)}
    for name, defined in pipeline.jobs.items():
        for dep in defined.inputs:
            if dep in position:
                assert position[dep] < position[name]


def test_ancestors_are_transitive_and_include_the_source() -> None:
    pipeline = load(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def a(rt):
            pass

        @job(inputs=["a"])
        def b(rt):
            pass

        @job(inputs=["b"])
        def c(rt):
            pass

        @job(inputs=["quire/push"])
        def other(rt):
            pass
        """
    )
    assert pipeline.ancestors("c") == {"b", "a", "quire/push"}
    assert pipeline.ancestors("a") == {"quire/push"}


def test_loading_twice_gives_independent_pipelines() -> None:
    source = """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def only(rt):
            pass
        """
    first = load(source)
    second = load(source)
    assert list(first.jobs) == list(second.jobs) == ["only"]


def test_job_decorator_outside_a_load_still_returns_the_function() -> None:
    from quire.ci import job

    def lint(rt: object) -> None:
        return None

    assert job(inputs=["quire/push"])(lint) is lint


def test_caches_are_declared_at_the_top_level_with_a_name_and_an_absolute_path() -> None:
    pipeline = load(
        """
        from quire.ci import cache, job

        cache("pip", "/root/.cache/pip")
        cache("npm", "/root/.npm")

        @job(inputs=["quire/push"])
        def build(rt):
            pass
        """
    )
    assert {name: c.path for name, c in pipeline.caches.items()} == {
        "pip": "/root/.cache/pip",
        "npm": "/root/.npm",
    }
    assert pipeline.caches["pip"].line == 3


def test_bad_and_duplicate_caches_are_each_a_problem_with_their_line() -> None:
    found = problems_of(
        """
        from quire.ci import cache, job

        cache("../up", "/x")
        cache("rel", "relative/path")
        cache("pip", "/a")
        cache("pip", "/b")

        @job(inputs=["quire/push"])
        def build(rt):
            pass
        """
    )
    assert [line for line, _ in found] == [3, 4, 6]
    assert "not a valid name" in found[0][1]
    assert "must be absolute" in found[1][1]
    assert "duplicate cache 'pip' (first defined on line 5)" in found[2][1]


SUBSETTABLE = """
from quire.ci import job

@job(inputs=["quire/push"])
def lint(rt):
    pass

@job(inputs=["lint"])
def tests(rt):
    pass

@job(inputs=["quire/push"])
def docs(rt):
    pass

@job(inputs=["tests", "docs"])
def release(rt):
    pass
"""


def test_a_subset_keeps_the_targets_and_everything_they_need_in_order() -> None:
    pipeline = load(SUBSETTABLE)
    assert pipeline.subset(["tests"]).order == ["lint", "tests"]
    assert pipeline.subset(["docs", "lint"]).order == ["lint", "docs"]
    assert pipeline.subset(["release"]).order == ["lint", "tests", "docs", "release"]


def test_a_subset_naming_an_unknown_job_is_bad_input_with_the_closest_id() -> None:
    with pytest.raises(UsageError) as caught:
        load(SUBSETTABLE).subset(["tset"])
    assert "no job 'tset'" in str(caught.value)
    assert "did you mean 'tests'?" in str(caught.value)
    assert caught.value.exit_code == 2


def test_an_unknown_input_suggests_the_closest_job_id() -> None:
    found = problems_of(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def tests(rt):
            pass

        @job(inputs=["tset"])
        def report(rt):
            pass
        """
    )
    assert "unknown input 'tset' (did you mean 'tests'?)" in found[0][1]


USES_HELPERS = """
from quire.ci import job
from helpers import NAME
import lib.util

@job(inputs=["quire/push"])
def named(rt):
    return {"name": NAME, "util": lib.util.VALUE}
"""


def test_modules_beside_ci_py_are_importable_from_the_given_texts_and_leave_nothing() -> None:
    first = load_pipeline(
        USES_HELPERS,
        {"helpers.py": b"NAME = 'one'\n", "lib/__init__.py": b"", "lib/util.py": b"VALUE = 1\n"},
    )
    second = load_pipeline(
        USES_HELPERS,
        {"helpers.py": b"NAME = 'two'\n", "lib/__init__.py": b"", "lib/util.py": b"VALUE = 2\n"},
    )
    assert first.jobs["named"].func(None) == {"name": "one", "util": 1}  # type: ignore[arg-type]
    assert second.jobs["named"].func(None) == {"name": "two", "util": 2}  # type: ignore[arg-type]
    assert not {"helpers", "lib", "lib.util"} & set(sys.modules)


def test_a_missing_helper_module_is_a_pipeline_error_with_its_line() -> None:
    with pytest.raises(PipelineError) as caught:
        load_pipeline(USES_HELPERS, {})
    assert caught.value.problems[0].line == 3
    assert "ModuleNotFoundError" in caught.value.problems[0].text
