"""`quire ci serve` in a real headless Chromium, driven by selenium, over real runs.

Debian's `chromium` and `chromium-driver` are used as installed
(/usr/bin/chromium, /usr/bin/chromedriver); nothing is downloaded. Without
them these tests are skipped, unless QUIRE_REQUIRE_BROWSER=1 (CI) makes
that a failure. The runs use the host executor: no docker is needed.

The live test measures the time from a job's print to the line being in
the page's DOM (a MutationObserver stamps it with the same wall clock the
job read) and prints it; it asserts only a generous functional deadline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import make_repo
from tests.integration.test_web_server import Served, serve

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEADLINE_S = 20.0  # functional only: a line that takes this long is not "live"


@pytest.fixture(autouse=True)
def no_container_left_behind() -> None:
    """Overrides the suite's docker leak check: these runs use the host executor."""


def _unavailable(why: str) -> None:
    if os.environ.get("QUIRE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"QUIRE_REQUIRE_BROWSER=1 but {why}", pytrace=False)
    pytest.skip(why)


def _new_driver(*, javascript: bool = True) -> WebDriver:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


@pytest.fixture(scope="session")
def browser_available() -> None:
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            _unavailable(f"{program} is missing (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")


@pytest.fixture
def browsers(browser_available: None) -> Iterator[Callable[..., WebDriver]]:
    """Starts Chromium sessions on demand; quits them all after the test."""
    started: list[WebDriver] = []

    def start(*, javascript: bool = True) -> WebDriver:
        driver = _new_driver(javascript=javascript)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


@pytest.fixture
def browser(browsers: Callable[..., WebDriver]) -> WebDriver:
    return browsers()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path / "serve.log") as served:
        yield served


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $QUIRE_TEST_ARTIFACTS, else a temp dir (printed)."""
    chosen = os.environ.get("QUIRE_TEST_ARTIFACTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("web-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def pipeline(body: str) -> str:
    return "import sys, time\nfrom pathlib import Path\nfrom quire.ci import job\n\n" + body


def start_run(repo: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "quire", "ci", "run", "--quiet", "--repo", str(repo)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )


def run_to_end(repo: Path) -> None:
    proc = start_run(repo)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 1), err.decode(errors="replace")


def store_repo(served: Served, folder: str) -> str | None:
    """The store's name of the repository in `folder` (the folder name, maybe with a suffix)."""
    runs = served.state / "runs"
    names = [p.name for p in runs.iterdir()] if runs.is_dir() else []
    found = [n for n in names if n == folder or n.startswith(folder + "-")]
    return found[0] if found else None


def latest_id(served: Served, repo: str) -> str:
    return Path(os.readlink(served.state / "runs" / repo / "latest")).name


def text_of(driver: WebDriver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


FINISHED = pipeline(
    """
@job(inputs=["quire/push"])
def build(rt):
    rt.sh("printf '\\\\033[32mbuilt ok\\\\033[0m\\\\n'")
    return {"artifact": "app.tar"}


@job(inputs=["build"])
def xss(rt):
    rt.sh("echo '<script>alert(1)</script>'")
    rt.sh("echo oops >&2; exit 4", check=True)
"""
)


@pytest.fixture
def finished_run(tmp_path: Path, server: Served) -> tuple[str, str]:
    repo = tmp_path / "webproj"
    make_repo(repo, {".quire/ci.py": FINISHED})
    run_to_end(repo)
    name = store_repo(server, "webproj")
    assert name is not None
    return name, latest_id(server, name)


def test_runs_page_lists_a_finished_run(
    server: Served, finished_run: tuple[str, str], browser: WebDriver
) -> None:
    repo, run_id = finished_run
    browser.get(server.url)
    rows = wait_for(lambda: text_of(browser, f'tr.run[data-run="{run_id}"]'), "the run's row")
    assert repo in rows and "failed" in rows and "host" in rows


def test_run_page_shows_its_jobs(
    server: Served,
    finished_run: tuple[str, str],
    browser: WebDriver,
    artifacts: Path,
) -> None:
    repo, run_id = finished_run
    browser.get(f"{server.url}runs/{repo}/{run_id}")
    jobs = text_of(browser, "#jobs tr.job")
    assert re.search(r"build\s+success", jobs), jobs
    assert re.search(r"xss\s+failed", jobs), jobs
    assert "app.tar" in jobs
    assert "built ok" in text_of(browser, "pre.log")
    green = browser.execute_script(
        "return getComputedStyle(document.querySelector('pre.log .f2')).color"
    )
    assert green == "rgb(13, 188, 121)"  # the ANSI colour reached the page, as a class
    shot = artifacts / "run-page.png"
    browser.set_window_size(1280, 1300)
    browser.save_screenshot(str(shot))
    print(f"\nscreenshot of the run page: {shot}")


def test_job_output_script_renders_as_text(
    server: Served, finished_run: tuple[str, str], browser: WebDriver
) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    repo, run_id = finished_run
    for url in (f"runs/{repo}/{run_id}", f"runs/{repo}/{run_id}/jobs/xss"):
        browser.get(server.url + url)
        assert "<script>alert(1)</script>" in text_of(browser, "pre.log")
        assert browser.execute_script("return document.querySelectorAll('pre script').length") == 0
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises unless an alert is open


def test_pages_are_readable_with_javascript_off(
    server: Served, finished_run: tuple[str, str], browsers: Callable[..., WebDriver]
) -> None:
    repo, run_id = finished_run
    driver = browsers(javascript=False)
    driver.get(f"{server.url}runs/{repo}/{run_id}")
    assert "built ok" in text_of(driver, "pre.log")
    assert "xss" in text_of(driver, "#jobs")
    driver.get(server.url)
    assert run_id in text_of(driver, "#runs")


LIVE = pipeline(
    """
GO = Path({go!r})
# The marker is joined at run time, so the command line shown before it never holds it.
PRINT = "import time; print('LIVE' + '-LINE', repr(time.time()), flush=True)"


@job(inputs=["quire/push"])
def slow(rt):
    rt.sh("echo waiting for the browser")
    while not GO.exists():
        time.sleep(0.02)
    rt.sh([sys.executable, "-c", PRINT])
    while not Path(str(GO) + ".end").exists():
        time.sleep(0.02)
    rt.sh("echo all done")
"""
)

OBSERVE = """
window.__liveLineSeenAt = null;
new MutationObserver(function () {
  if (window.__liveLineSeenAt === null && document.body.textContent.indexOf("LIVE-LINE ") >= 0) {
    window.__liveLineSeenAt = Date.now();
  }
}).observe(document.body, {childList: true, subtree: true, characterData: true});
"""


def test_a_line_printed_by_a_running_job_appears_in_open_pages(
    tmp_path: Path, server: Served, browsers: Callable[..., WebDriver]
) -> None:
    go = tmp_path / "go"
    repo = tmp_path / "liveproj"
    make_repo(repo, {".quire/ci.py": LIVE.replace("{go!r}", repr(str(go)))})
    proc = start_run(repo)
    try:
        name = wait_for(lambda: store_repo(server, "liveproj"), "the run")
        wait_for(lambda: (server.state / "runs" / name / "latest").exists(), "the run")
        run_id = latest_id(server, name)
        watchers = [browsers(), browsers()]  # several browsers on the same run
        for driver in watchers:
            driver.get(f"{server.url}runs/{name}/{run_id}")
            wait_for(lambda d=driver: "waiting for the browser" in text_of(d, "pre.log"), "start")
            wait_for(lambda d=driver: "live" in text_of(d, "#live-status"), "the stream")
            driver.execute_script(OBSERVE)
        go.touch()
        latencies = []
        for driver in watchers:
            seen = wait_for(
                lambda d=driver: d.execute_script("return window.__liveLineSeenAt"), "the line"
            )
            found = re.search(r"LIVE-LINE (\d+\.\d+)", text_of(driver, "pre.log"))
            assert found is not None
            printed = float(found.group(1))
            latencies.append(seen / 1000 - printed)
        shown = ", ".join(f"{latency * 1000:.0f} ms" for latency in latencies)
        print(f"\nprint-to-DOM latency in {len(watchers)} browsers: {shown} (target <= 500 ms)")
        Path(str(go) + ".end").touch()
        for driver in watchers:
            wait_for(lambda d=driver: "all done" in text_of(d, "pre.log"), "the last line")
            wait_for(lambda d=driver: text_of(d, "#run-state") == "complete", "the run's end")
            assert re.search(r"slow\s+success", text_of(driver, "#jobs"))
            assert text_of(driver, "#live-status") == "finished"
            assert "exit code" in text_of(driver, "#facts")  # the run's facts updated too
            assert text_of(driver, "pre.log").count("LIVE-LINE ") == 1  # no line twice
    finally:
        Path(str(go) + ".end").touch()
        go.touch()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")


def test_a_new_run_appears_on_the_open_runs_page(
    tmp_path: Path, server: Served, browser: WebDriver
) -> None:
    repo = tmp_path / "listproj"
    make_repo(repo, {".quire/ci.py": FINISHED})
    browser.get(server.url)
    assert "no runs yet" in text_of(browser, "#runs")
    wait_for(lambda: "live" in text_of(browser, "#live-status"), "the stream")
    run_to_end(repo)
    wait_for(lambda: "listproj" in text_of(browser, "#runs"), "the new run in the list")


def test_an_open_job_page_shows_its_job_end(
    tmp_path: Path, server: Served, browser: WebDriver
) -> None:
    go = tmp_path / "go"
    repo = tmp_path / "jobproj"
    make_repo(repo, {".quire/ci.py": LIVE.replace("{go!r}", repr(str(go)))})
    proc = start_run(repo)
    try:
        name = wait_for(lambda: store_repo(server, "jobproj"), "the run")
        wait_for(lambda: (server.state / "runs" / name / "latest").exists(), "the run")
        run_id = latest_id(server, name)
        wait_for(
            lambda: (server.state / "runs" / name / "latest" / "jobs" / "slow").is_dir(), "the job"
        )
        browser.get(f"{server.url}runs/{name}/{run_id}/jobs/slow")
        wait_for(lambda: "live" in text_of(browser, "#live-status"), "the stream")
        assert text_of(browser, "#job-state") == "running"
        go.touch()
        Path(str(go) + ".end").touch()
        wait_for(lambda: text_of(browser, "#live-status") == "finished", "the run's end")
        # The job's badge and facts follow the job, not only its log.
        wait_for(lambda: text_of(browser, "#job-state") == "success", "the job's badge")
        assert not re.search(r"duration\s+-", text_of(browser, "#job-facts"))
    finally:
        Path(str(go) + ".end").touch()
        go.touch()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")


BATCHES = pipeline(
    """
STEP = Path({step!r})
# `EN""D`: the shell prints BATCH-n-END, the command line shown before it does not.
PRINT = "for i in $(seq 1 150); do echo batch {n} line $i; done; echo BATCH-{n}-EN\\"\\"D"


@job(inputs=["quire/push"])
def chatty(rt):
    for n in range(1, 5):
        while not Path(f"{STEP}.{n}").exists():
            time.sleep(0.02)
        rt.sh(PRINT.format(n=n))
    while not Path(f"{STEP}.end").exists():
        time.sleep(0.02)
"""
)

PRE_STATE = """
var pre = document.querySelector("section.joblog pre.log");
return {
  text: pre.textContent,
  overflows: pre.scrollHeight > pre.clientHeight + 50,
  atEnd: pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8,
  top: pre.scrollTop,
  follow: pre.dataset.follow,
};
"""


def test_a_live_job_page_follows_the_tail_until_scrolled_up_and_shows_the_jobs_end(
    tmp_path: Path, server: Served, browser: WebDriver, artifacts: Path
) -> None:
    step = tmp_path / "step"
    repo = tmp_path / "followproj"
    make_repo(repo, {".quire/ci.py": BATCHES.replace("{step!r}", repr(str(step)))})
    proc = start_run(repo)

    def batch(n: int) -> dict[str, Any]:
        Path(f"{step}.{n}").touch()
        return wait_for(  # type: ignore[no-any-return]
            lambda: (s := browser.execute_script(PRE_STATE))["text"].count(f"BATCH-{n}-END") and s,
            f"batch {n} on the page",
        )

    try:
        Path(f"{step}.1").touch()
        name = wait_for(lambda: store_repo(server, "followproj"), "the run")
        wait_for(lambda: (server.state / "runs" / name / "latest").exists(), "the run")
        run_id = latest_id(server, name)
        log = server.state / "runs" / name / "active" / run_id / "jobs" / "chatty" / "log.jsonl"
        wait_for(lambda: log.exists() and b"BATCH-1-END" in log.read_bytes(), "batch 1")
        browser.get(f"{server.url}runs/{name}/{run_id}/jobs/chatty")
        wait_for(lambda: "live" in text_of(browser, "#live-status"), "the stream")
        browser.execute_script("window.__notReloaded = true")
        opened = browser.execute_script(PRE_STATE)
        assert opened["overflows"] and opened["atEnd"], opened  # opens at the tail

        grown = batch(2)
        assert grown["atEnd"] and grown["follow"] == "1", grown  # it followed the tail

        browser.execute_script('document.querySelector("pre.log").scrollTop = 0')
        wait_for(lambda: browser.execute_script(PRE_STATE)["follow"] == "0", "follow off")
        held = batch(3)
        assert held["top"] == 0 and not held["atEnd"], held  # the reader stays where they are

        browser.execute_script(
            'var p = document.querySelector("pre.log"); p.scrollTop = p.scrollHeight'
        )
        wait_for(lambda: browser.execute_script(PRE_STATE)["follow"] == "1", "follow on")
        again = batch(4)
        assert again["atEnd"], again  # back at the end: it follows again

        assert text_of(browser, "#job-state") == "running"
        ticking = text_of(browser, "#job-facts .elapsed")
        assert re.fullmatch(r"\d+ s|\d+ m \d\d s", ticking), ticking
        Path(f"{step}.end").touch()
        wait_for(lambda: text_of(browser, "#job-state") == "success", "the job's end")
        wait_for(lambda: text_of(browser, "#run-state") == "complete", "the run's end")
        facts = text_of(browser, "#job-facts")
        assert re.search(r"duration\s+\d+\.\d\d s|duration\s+\d+ m \d\d s", facts), facts
        assert browser.find_elements("css selector", "#job-facts .elapsed") == []
        assert browser.execute_script("return window.__notReloaded") is True
        shot = artifacts / "job-page-ended.png"
        browser.save_screenshot(str(shot))
        print(f"\nscreenshot of the job page at its end: {shot}")
    finally:
        for n in (1, 2, 3, 4, "end"):
            Path(f"{step}.{n}").touch()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")


def test_line_times_show_and_hide_in_place(
    server: Served, finished_run: tuple[str, str], browser: WebDriver
) -> None:
    repo, run_id = finished_run
    browser.get(f"{server.url}runs/{repo}/{run_id}/jobs/build")
    shown = "return getComputedStyle(document.querySelector('pre.log i[data-t]')).display"
    assert browser.execute_script(shown) == "none"
    assert "built ok" in text_of(browser, "pre.log")
    browser.find_element("css selector", "a.times-toggle").click()
    wait_for(lambda: browser.execute_script(shown) == "inline", "times shown")
    drawn = browser.execute_script(
        "return getComputedStyle(document.querySelector('pre.log i[data-t]'), '::before').content"
    )
    assert re.fullmatch(r'"\d\d:\d\d:\d\d\.\d{3} "', drawn), drawn
    assert browser.current_url.endswith("?times=1")
    assert text_of(browser, "a.times-toggle") == "hide times"
    browser.find_element("css selector", "a.times-toggle").click()
    wait_for(lambda: browser.execute_script(shown) == "none", "times hidden")
