"""What a person sees of a run while it goes: the job's end on its page, elapsed times,
waiting jobs, line times, and the whole output as plain text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from quire.web import plaintext
from quire.web.app import create_app, elapsed_text
from quire.web.live import RunFollower
from tests.unit.test_web_support import T0, Store, line, out, run_id

NOW = T0 + timedelta(seconds=1 + 125)  # run 1 started at T0 + 1 s


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_app(store.state)
    app.state.web.clock = lambda: NOW
    with TestClient(app) as test_client:
        yield test_client
    app.state.web.index.close()


def events(body: str) -> list[tuple[str, dict[str, object]]]:
    return [(n, orjson.loads(d)) for n, d in re.findall(r"event: (\w+)\ndata: (.*)\n", body)]


def test_elapsed_text_counts_whole_seconds_minutes_and_hours() -> None:
    assert elapsed_text(0.9) == "0 s"
    assert elapsed_text(59.99) == "59 s"
    assert elapsed_text(60) == "1 m 00 s"
    assert elapsed_text(125) == "2 m 05 s"
    assert elapsed_text(3599) == "59 m 59 s"
    assert elapsed_text(3600) == "1 h 00 m"
    assert elapsed_text(3600 + 7 * 60 + 59) == "1 h 07 m"
    assert elapsed_text(-3) == "0 s"  # a clock a little behind the run's


def test_a_running_run_and_job_show_their_elapsed_time_ticking(
    store: Store, client: TestClient
) -> None:
    store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    since = (T0 + timedelta(seconds=1)).isoformat()
    job_since = T0.isoformat()  # write_job: job 0 started at T0
    listed = client.get("/").text
    assert f'<span class="elapsed" data-since="{since}">2 m 05 s</span>' in listed
    page = client.get(f"/runs/proj/{run_id(1)}").text
    assert f'<dd><span class="elapsed" data-since="{since}">2 m 05 s</span></dd>' in page
    assert f'<td><span class="elapsed" data-since="{job_since}">2 m 06 s</span></td>' in page
    job = client.get(f"/runs/proj/{run_id(1)}/jobs/build").text
    assert f'<span class="elapsed" data-since="{job_since}">2 m 06 s</span>' in job


def test_a_finished_run_shows_its_duration_not_a_clock(store: Store, client: TestClient) -> None:
    store.add(1, jobs={"build": line("sh-start", cmd="make")})
    for url in ("/", f"/runs/proj/{run_id(1)}", f"/runs/proj/{run_id(1)}/jobs/build"):
        text = client.get(url).text
        assert "elapsed" not in text, url
        assert "2.00 s" in text or "1.00 s" in text, url


def first_jobs_event(client: TestClient, url: str) -> dict[str, str]:
    with client.stream("GET", url) as response:
        for text in response.iter_lines():
            if text.startswith("data: ") and '"facts"' in text:
                data: dict[str, str] = orjson.loads(text[6:])
                return data
    raise AssertionError(f"no jobs event from {url}")


def test_live_fragments_leave_the_clock_to_the_script_so_they_do_not_change_each_second(
    store: Store, client: TestClient
) -> None:
    store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    first = first_jobs_event(client, f"/live/runs/proj/{run_id(1)}?job=build")
    since = (T0 + timedelta(seconds=1)).isoformat()
    assert f'<span class="elapsed" data-since="{since}"></span>' in first["facts"]
    assert f'<span class="elapsed" data-since="{T0.isoformat()}"></span>' in first["html"]
    assert f'<span class="elapsed" data-since="{T0.isoformat()}"></span>' in first["job_facts"]


def test_a_job_not_started_yet_is_listed_as_waiting(store: Store, client: TestClient) -> None:
    path = store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    Store.write_job(path, "deploy", "pending", 1)
    (path / "jobs" / "deploy" / "log.jsonl").write_bytes(b"")
    page = client.get(f"/runs/proj/{run_id(1)}").text
    row = re.search(r'<tr class="job" data-job="deploy">.*?</tr>', page, re.S)
    assert row and '<span class="state waiting">waiting</span>' in row.group()
    job = client.get(f"/runs/proj/{run_id(1)}/jobs/deploy").text
    assert '<span id="job-state" class="state waiting">waiting</span>' in job
    assert "waiting for its inputs" in job


def test_the_job_stream_sends_the_jobs_end_to_its_page(store: Store) -> None:
    path = store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    app = create_app(store.state)
    web = app.state.web
    run = web.view.run("proj", run_id(1))
    follower = RunFollower(web.view, run, lambda info: web.render_jobs(info, "build"), job="build")
    running = dict(follower.poll())["jobs"]
    assert running["job_state"] == "running" and "elapsed" in running["job_facts"]
    Store.write_job(path, "build", "failed", error="tests failed: 3")
    target = path.parent.parent / "failed" / path.name
    target.parent.mkdir()
    path.rename(target)
    ended = follower.poll()
    jobs = dict(ended)["jobs"]
    assert jobs["job_state"] == "failed"
    assert "<dd>1.00 s</dd>" in jobs["job_facts"] and "elapsed" not in jobs["job_facts"]
    assert "tests failed: 3" in jobs["job_facts"]
    assert ended[-1] == ("end", {"state": "failed"})
    follower.close()
    web.index.close()


def test_the_job_page_has_the_places_its_stream_updates(store: Store, client: TestClient) -> None:
    store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    page = client.get(f"/runs/proj/{run_id(1)}/jobs/build").text
    assert '<span id="job-state" class="state running">running</span>' in page
    assert '<span id="run-state" class="state active">active</span>' in page
    assert '<dl class="facts" id="job-facts">' in page
    assert 'data-tail="1"' in page
    first = first_jobs_event(client, f"/live/runs/proj/{run_id(1)}?job=build")
    assert first["job_state"] == "running"


def test_each_line_carries_its_time_and_times_show_when_asked(
    store: Store, client: TestClient
) -> None:
    log = (
        line("sh-start", cmd="make")
        + orjson.dumps({"t": "2026-11-24T16:00:05.250Z", "event": "stdout", "data": "one\ntw"})
        + b"\n"
        + orjson.dumps({"t": "2026-11-24T16:00:07.000Z", "event": "stdout", "data": "o\nthree\n"})
        + b"\n"
    )
    store.add(1, jobs={"build": log})
    url = f"/runs/proj/{run_id(1)}/jobs/build"
    page = client.get(url).text
    pre = re.search(r'<pre class="log">(.*?)</pre>', page, re.S)
    assert pre is not None
    assert pre.group(1) == (
        '<i data-t="16:00:00.000"></i><span class="cmd">$ make</span>\n'
        '<i data-t="16:00:05.250"></i>one\n'
        '<i data-t="16:00:05.250"></i>two\n'
        '<i data-t="16:00:07.000"></i>three\n'
    )
    assert "<body>" in page and 'href="/runs/proj/' in page
    assert f'<a class="times-toggle" href="{url}?times=1">show times</a>' in page
    shown = client.get(url + "?times=1&before=99999").text
    assert '<body class="times">' in shown
    assert f'<a class="times-toggle" href="{url}?before=99999">hide times</a>' in shown


def test_output_txt_is_the_logs_output_exactly_then_served_from_the_cache_with_its_length(
    store: Store, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plaintext, "BLOCK_BYTES", 5)
    import base64

    binary = b"\x00\xff\x1b[1mbold\x1b[0m\r\n"
    log = (
        line("sh-start", cmd="make")
        + out("partial line, ")
        + line("stderr", data=base64.b64encode(binary).decode(), encoding="base64")
        + out("\x1b[31mred\x1b[0m no newline")
        + b'{"t":"x","event":"stdout","data":"torn'
    )
    path = store.add(1, jobs={"build": log})
    expected = b"partial line, " + binary + b"\x1b[31mred\x1b[0m no newline"
    url = f"/runs/proj/{run_id(1)}/jobs/build/output.txt"
    first = client.get(url)
    assert first.content == expected
    assert (path / "jobs" / "build" / plaintext.CACHE_NAME).read_bytes() == expected
    again = client.get(url)
    assert again.content == expected
    assert again.headers["content-length"] == str(len(expected))
    assert again.headers["content-type"] == "text/plain; charset=utf-8"


def test_the_runs_list_and_run_page_show_the_branch_and_the_commits_subject_escaped(
    store: Store, client: TestClient
) -> None:
    sha = f"{1:040x}"
    store.add(1, revision=sha, subject="Fix <b>the</b> parser")
    listed = client.get("/").text
    assert "<td>main</td>" in listed
    assert (
        f'<td><code>{sha[:12]}</code> <span class="subject">Fix &lt;b&gt;the&lt;/b&gt; parser'
        "</span></td>" in listed
    )
    assert listed.count(sha[:12]) == 1
    page = client.get(f"/runs/proj/{run_id(1)}").text
    assert '<dd class="subject">Fix &lt;b&gt;the&lt;/b&gt; parser</dd>' in page
    assert "<dt>branch</dt><dd>main</dd>" in page and page.count(sha) == 1


def test_a_run_without_a_subject_shows_none(store: Store, client: TestClient) -> None:
    store.add(1)
    assert 'class="subject"' not in client.get("/").text
    assert "<dt>subject</dt>" not in client.get(f"/runs/proj/{run_id(1)}").text


def test_the_run_page_lists_each_jobs_inputs_and_the_jobs_still_waiting(
    store: Store, client: TestClient
) -> None:
    plan = {"build": ["quire/push"], "test": ["build"], "deploy": ["build", "test"]}
    store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")}, plan=plan)
    page = client.get(f"/runs/proj/{run_id(1)}").text
    rows = re.findall(r'<tr class="job" data-job="([^"]+)">(.*?)</tr>', page, re.S)
    assert [job for job, _ in rows] == ["build", "test", "deploy"]
    cells = {job: re.findall(r"<td[^>]*>(.*?)</td>", body, re.S) for job, body in rows}
    assert cells["build"][2] == "quire/push" and "running" in cells["build"][1]
    assert cells["test"][2] == "build"
    assert cells["deploy"][2] == "build, test"
    for waiting in ("test", "deploy"):
        assert cells[waiting][0] == waiting  # no link: it has no page yet
        assert cells[waiting][1] == '<span class="state waiting">waiting</span>'
    job = client.get(f"/runs/proj/{run_id(1)}/jobs/build").text
    assert '<dd class="inputs">quire/push</dd>' in job


def test_jobs_of_a_finished_run_that_never_started_are_not_run_not_waiting(
    store: Store, client: TestClient
) -> None:
    plan = {"build": ["quire/push"], "test": ["build"]}
    store.add(1, state="cancelled", jobs={"build": line("sh-start", cmd="make")}, plan=plan)
    page = client.get(f"/runs/proj/{run_id(1)}").text
    assert '<span class="state not-run">not run</span>' in page
    assert "waiting" not in page
