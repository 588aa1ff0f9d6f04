"""The web page's actions in a real headless Chromium, with a real `quire ci worker`, `quire ci
serve` and a bare repository with quire's hook: log in, re-run a finished run and watch the new
one finish, start a branch, cancel a running run, log out; a viewer sees no buttons, and a
forged POST from their session (or an operator's without the CSRF token) changes nothing.

Users are added as a person adds them (`quire ci user add --password-stdin`); the runs use the
host executor (no docker needed).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quire.service.queue import Entry
from tests.integration.test_web_browser import browser_available, browsers, wait_for
from tests.integration.test_web_server import Served, serve
from tests.integration.test_worker import push, pushable, rows, worker

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
__all__ = ["browser_available", "browsers"]  # fixtures, used by name

DEADLINE_S = 90.0  # a run through a worker: functional only
PIPELINE = """\
from quire.ci import job


@job(inputs=["quire/push"])
def build(rt):
    if rt.jobs("quire/push")["branch"] == "slow":
        rt.sh("sleep 120")
    rt.sh("echo built")
"""


@pytest.fixture(autouse=True)
def no_container_left_behind() -> None:
    """Overrides the suite's docker leak check: these runs use the host executor."""


def add_user(name: str, role: str, password: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quire",
            "ci",
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
        ],
        input=password,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Served, Path, Path]]:
    """A served state directory with an operator and a viewer, a bare repository with the
    hook (and a clone to push from)."""
    add_user("olive", "operator", "op-secret")
    add_user("vic", "viewer", "view-secret")
    bare, work = pushable(tmp_path, "webact", {".quire/ci.py": PIPELINE})
    with serve(tmp_path / "serve.log") as served:
        yield served, bare, work


def log_in(browser: WebDriver, served: Served, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url + "login")
    browser.find_element(By.NAME, "username").send_keys(name)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for(lambda: name in text(browser, "header .who"), f"{name} to be logged in")


def text(browser: WebDriver, css: str) -> str:
    """The text of what `css` selects, read in one step ('' while the page is being
    replaced: a page that reloads itself can drop nodes between two driver calls)."""
    from selenium.common.exceptions import WebDriverException

    try:
        found = browser.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => e.innerText).join('\\n')",
            css,
        )
    except WebDriverException:
        return ""
    return str(found or "")


def click(browser: WebDriver, css: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, css).click()


def state_shown(browser: WebDriver) -> str:
    return text(browser, "#run-state")


def finished_row(ref: str) -> Callable[[], Entry | None]:
    def find() -> Entry | None:
        done = [r for r in rows() if r.ref == ref and r.state == "done"]
        return done[-1] if done else None

    return find


def test_an_operator_re_runs_starts_a_branch_cancels_and_logs_out(
    tmp_path: Path, site: tuple[Served, Path, Path], browsers: Callable[..., WebDriver]
) -> None:
    served, _bare, work = site
    browser = browsers()
    with worker(tmp_path):
        push(work, "HEAD:main")
        wait_for(finished_row("refs/heads/main"), "the pushed run", DEADLINE_S)
        first = rows()[0]
        log_in(browser, served, "olive", "op-secret")

        # Re-run the finished run: the new one is queued, starts and finishes, by olive.
        browser.get(f"{served.url}runs/{first.repo}/{first.run_id}")
        assert state_shown(browser) == "complete"
        click(browser, "button.rerun")
        wait_for(
            lambda: state_shown(browser) == "complete" and first.run_id not in browser.current_url,
            "the re-run to finish on its page",
            DEADLINE_S,
        )
        trigger = text(browser, "dd.trigger")
        assert f"re-run of {first.run_id} by olive" in trigger, trigger

        # Start a branch from the repository's page.
        browser.get(f"{served.url}runs/{first.repo}")
        from selenium.webdriver.common.by import By

        browser.find_element(By.CSS_SELECTOR, "form.start input[name=ref]").send_keys("main")
        click(browser, "form.start button")
        wait_for(
            lambda: (
                state_shown(browser) == "complete"
                and "started by hand by olive" in text(browser, "dd.trigger")
            ),
            "the started branch to finish",
            DEADLINE_S,
        )

        # Cancel a running run.
        push(work, "HEAD:refs/heads/slow")
        wait_for(
            lambda: any(r.ref == "refs/heads/slow" and r.child_pid for r in rows()),
            "the slow run to start",
            DEADLINE_S,
        )
        slow = next(r for r in rows() if r.ref == "refs/heads/slow")
        browser.get(f"{served.url}runs/{slow.repo}/{slow.run_id}")
        wait_for(
            lambda: state_shown(browser) in ("active", "pending") or browser.refresh(),
            "the slow run's page",
            DEADLINE_S,
        )
        click(browser, "button.cancel")
        wait_for(
            lambda: state_shown(browser) == "cancelled" or browser.refresh(),
            "the run to be cancelled",
            DEADLINE_S,
        )
        assert "by olive" in text(browser, "#facts")
        wait_for(finished_row("refs/heads/slow"), "the worker to record it done", DEADLINE_S)
        done = finished_row("refs/heads/slow")()
        assert done is not None and done.outcome == "cancelled"

        # Log out: the buttons go with the session.
        click(browser, "button.logout")
        wait_for(lambda: "Log in" in text(browser, "header"), "the logout")
        browser.get(f"{served.url}runs/{first.repo}/{first.run_id}")
        assert text(browser, "button.rerun") == ""


def test_a_viewer_sees_no_buttons_and_forged_posts_change_nothing(
    tmp_path: Path, site: tuple[Served, Path, Path], browsers: Callable[..., WebDriver]
) -> None:
    served, _bare, work = site
    push(work, "HEAD:main")  # no worker: the run waits in the queue
    (queued,) = rows()
    viewer, operator = browsers(), browsers()
    log_in(viewer, served, "vic", "view-secret")
    viewer.get(f"{served.url}runs/{queued.repo}/{queued.run_id}")
    assert "queued" in state_shown(viewer)
    assert "no worker is running" in text(viewer, "p.no-worker")
    assert text(viewer, "button.cancel") == "" and text(viewer, "button.rerun") == ""
    viewer.get(f"{served.url}runs/{queued.repo}")
    assert text(viewer, "form.start") == ""

    forge = """
        const done = arguments[arguments.length - 1];
        const csrf = arguments[1] ? document.querySelector('input[name=csrf]').value : '';
        fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf: csrf, ref: 'main'})})
          .then(r => done(r.status), e => done(String(e)));
    """
    cancel = f"{served.url}runs/{queued.repo}/{queued.run_id}/cancel"
    start = f"{served.url}runs/{queued.repo}/start"
    # The viewer's own session and CSRF token: still only an operator may act.
    assert viewer.execute_async_script(forge, cancel, True) == 403
    assert viewer.execute_async_script(forge, start, True) == 403
    # An operator's session without the CSRF token.
    log_in(operator, served, "olive", "op-secret")
    operator.get(f"{served.url}runs/{queued.repo}/{queued.run_id}")
    assert text(operator, "button.cancel") == "Cancel"
    assert operator.execute_async_script(forge, cancel, False) == 403
    assert operator.execute_async_script(forge, start, False) == 403
    (still,) = rows()
    assert still.run_id == queued.run_id and still.state == "queued"
    # With it, the same request works.
    operator.get(f"{served.url}runs/{queued.repo}/{queued.run_id}")
    click(operator, "button.cancel")
    wait_for(lambda: rows()[0].state == "done", "the queued run to be cancelled")
    wait_for(lambda: state_shown(operator) == "cancelled", "the cancelled run's page")
    assert "by olive" in text(operator, "#facts")
