"""Every page and API route of `quire ci serve`, through Starlette's TestClient."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from quire.ci.store.runs import RunStore
from quire.ci.store.views import details, list_runs
from quire.web.app import CSP, create_app
from tests.unit.test_web_support import Store, line, out, run_id, untimed


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_app(store.state)
    with TestClient(app) as test_client:
        yield test_client
    app.state.web.index.close()


def job_log(*chunks: bytes) -> bytes:
    return line("sh-start", cmd="make", env=[]) + b"".join(chunks) + line("sh-exit", exit=0)


def test_runs_page_lists_runs_newest_first_across_repositories(
    store: Store, client: TestClient
) -> None:
    store.add(1, repo="alpha")
    store.add(3, repo="beta", state="failed")
    store.add(2, repo="alpha", state="active")
    page = client.get("/")
    assert page.status_code == 200
    found = re.findall(r'data-run="([^"]+)"', page.text)
    assert found == [run_id(3), run_id(2), run_id(1)]
    assert 'data-live="/live/runs?"' in page.text


def test_runs_page_filters_by_repository_and_state(store: Store, client: TestClient) -> None:
    store.add(1, repo="alpha")
    store.add(2, repo="alpha", state="failed")
    store.add(3, repo="beta", state="failed")
    by_repo = re.findall(r'data-run="([^"]+)"', client.get("/?repo=alpha").text)
    assert by_repo == [run_id(2), run_id(1)]
    by_state = re.findall(r'data-run="([^"]+)"', client.get("/?state=failed").text)
    assert by_state == [run_id(3), run_id(2)]
    both = re.findall(r'data-run="([^"]+)"', client.get("/runs/alpha?state=failed").text)
    assert both == [run_id(2)]


def test_runs_page_pages_fifty_at_a_time(store: Store, client: TestClient) -> None:
    for n in range(1, 61):
        store.add(n)
    first = client.get("/")
    second = client.get("/?page=2")
    assert len(re.findall(r'data-run="', first.text)) == 50
    assert re.findall(r'data-run="([^"]+)"', second.text)[0] == run_id(10)
    assert len(re.findall(r'data-run="', second.text)) == 10
    assert "page 2 of 2 (60 runs)" in second.text
    assert 'href="/?page=2"' in first.text
    assert "data-live" not in second.text  # new runs only ever appear on page 1


def test_runs_page_rejects_unknown_filters(store: Store, client: TestClient) -> None:
    store.add(1)
    assert client.get("/?repo=nope").status_code == 404
    assert client.get("/?state=sleeping").status_code == 400
    assert client.get("/?page=0").status_code == 400
    assert client.get("/?page=x").status_code == 400


@pytest.mark.parametrize(
    "value", ["99999999999999999999", "-1", "-99999999999999999999", "0", "x", "1.5", " 2", "1_0"]
)
@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/?page=", "page"),
        ("/runs/proj?page=", "page"),
        ("/api/runs?page=", "page"),
        ("/api/runs?per_page=", "per_page"),
        ("/api/runs/proj?limit=", "limit"),
    ],
)
def test_numbers_in_queries_out_of_range_or_malformed_are_400_naming_the_parameter(
    store: Store, client: TestClient, url: str, name: str, value: str
) -> None:
    store.add(1)
    response = client.get(url + value)
    assert response.status_code == 400, url + value
    assert f"{name} must be a whole number from 1 to 1000000" in response.text


def test_the_largest_accepted_page_is_empty_not_an_error(store: Store, client: TestClient) -> None:
    store.add(1)
    assert client.get("/api/runs?page=1000000&per_page=1000000").json()["runs"] == []
    assert len(client.get("/api/runs/proj?limit=1000000").json()) == 1
    assert "page 1000000 of 1" in client.get("/?page=1000000").text


def test_runs_page_picks_up_a_run_that_moved_to_complete(store: Store, client: TestClient) -> None:
    path = store.add(1, state="active")
    assert 'class="state active"' in client.get("/").text
    target = path.parent.parent / "complete" / path.name
    target.parent.mkdir()
    path.rename(target)
    page = client.get("/").text
    assert 'class="state complete"' in page
    assert 'class="state active"' not in page


def test_run_page_shows_revision_jobs_errors_outputs_and_container(
    store: Store, client: TestClient
) -> None:
    path = store.add(
        7,
        state="failed",
        container=True,
        jobs={"build": job_log(out("built\n")), "test": job_log(out("3 failed\n", "stderr"))},
        statuses={"build": "success", "test": "failed"},
        outputs={"build": {"artifact": "app.tar"}},
    )
    Store.write_job(path, "test", "failed", 1, error="tests failed: 3")
    page = client.get(f"/runs/proj/{run_id(7)}")
    assert page.status_code == 200
    text = untimed(page.text)
    assert f"{7:040x}" in text and "refs/heads/main" not in text and "<dd>main</dd>" in text
    assert "docker" in text and "9f3b8a72c1d4" in text and "container stopped" in text
    assert re.findall(r'<tr class="job" data-job="([^"]+)"', text) == ["build", "test"]
    assert "tests failed: 3" in text
    assert "&#34;artifact&#34;: &#34;app.tar&#34;" in text
    assert "built\n" in text
    assert '<span class="err">3 failed\n</span>' in text
    assert "data-live" not in text  # finished: nothing to follow
    assert re.search(r"<title>[^<]*</title>", text)
    assert text.count("Container</h2>") == 1 and text.count("Run events") == 1


def test_a_pushed_runs_sha_is_shown_once_in_the_list_and_on_its_page(
    store: Store, client: TestClient
) -> None:
    sha = f"{5:040x}"
    store.add(5, revision=sha)  # the worker runs a push by its full sha
    listed = client.get("/").text
    assert listed.count(sha[:12]) == 1 and "<td>main</td>" in listed
    page = client.get(f"/runs/proj/{run_id(5)}").text
    assert page.count(sha) == 1 and "<dd>main</dd>" in page
    with client.stream("GET", f"/live/runs/proj/{run_id(5)}") as response:
        facts = orjson.loads(re.findall(r"event: jobs\ndata: (.*)\n", response.read().decode())[0])
    assert facts["facts"].count(sha) == 1


def test_a_revision_other_than_the_sha_is_shown_beside_it(store: Store, client: TestClient) -> None:
    sha = f"{6:040x}"
    store.add(6, revision="v1.2")
    assert f"<td>v1.2 <code>{sha[:12]}</code></td>" in client.get("/").text
    assert "<td>main</td>" in client.get("/").text  # the branch, in a column of its own
    assert f"<dd>v1.2 <code>{sha}</code></dd>" in client.get(f"/runs/proj/{run_id(6)}").text


def test_running_run_page_points_the_browser_at_its_stream(
    store: Store, client: TestClient
) -> None:
    store.add(1, state="active", jobs={"build": job_log(out("half\n"))})
    text = client.get(f"/runs/proj/{run_id(1)}").text
    assert f'data-live="/live/runs/proj/{run_id(1)}"' in text
    size = len(job_log(out("half\n")))
    assert f'data-job="build" data-offset="{size}"' in text


def test_latest_redirects_to_the_run_id(store: Store, client: TestClient) -> None:
    store.add(1)
    store.add(2)
    response = client.get("/runs/proj/latest", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"/runs/proj/{run_id(2)}"


def test_job_output_is_html_escaped_and_colours_become_classes(
    store: Store, client: TestClient
) -> None:
    log = job_log(out("<script>alert(1)</script>\n"), out("\x1b[31mred\x1b[0m & ok\n"))
    store.add(1, jobs={"xss": log})
    for url in (f"/runs/proj/{run_id(1)}", f"/runs/proj/{run_id(1)}/jobs/xss"):
        text = client.get(url).text
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert '<span class="f1">red</span> &amp; ok' in text


def test_job_names_and_commands_are_escaped_too(store: Store, client: TestClient) -> None:
    log = line("sh-start", cmd="echo '<b>'") + line("sh-exit", exit=0)
    store.add(1, jobs={"a<b>": log})
    text = client.get(f"/runs/proj/{run_id(1)}").text
    assert "a<b>" not in text and "a&lt;b&gt;" in text
    assert "$ echo &#x27;&lt;b&gt;&#x27;" in text


def test_masked_secrets_are_shown_as_stored(store: Store, client: TestClient) -> None:
    store.add(1, jobs={"deploy": job_log(out("token=***\n"))})
    assert "token=***" in client.get(f"/runs/proj/{run_id(1)}/jobs/deploy").text


def test_job_page_shows_the_tail_and_pages_back_to_the_start(
    store: Store, client: TestClient
) -> None:
    chunks = [out(f"line {i:05d} " + "x" * 200 + "\n") for i in range(3000)]
    store.add(1, jobs={"big": job_log(*chunks)})
    url = f"/runs/proj/{run_id(1)}/jobs/big"
    seen: list[int] = []
    page = client.get(url)
    assert "exit 0" in page.text and "line 02999" in page.text and "line 00000" not in page.text
    pages = 0
    while True:
        pages += 1
        seen = [int(n) for n in re.findall(r"line (\d{5})", page.text)] + seen
        earlier = re.search(r'href="([^"]+\?before=\d+)"', page.text)
        if earlier is None:
            break
        page = client.get(earlier.group(1).replace("&amp;", "&"))
    assert pages > 2
    assert seen == list(range(3000))  # every line exactly once, in order
    later = re.search(r'href="([^"]+\?after=\d+)"', page.text)
    assert later is not None and "line 0" in client.get(later.group(1)).text


def test_job_page_rejects_bad_offsets(store: Store, client: TestClient) -> None:
    store.add(1, jobs={"a": job_log(out("x\n"))})
    assert client.get(f"/runs/proj/{run_id(1)}/jobs/a?before=-1").status_code == 400
    assert client.get(f"/runs/proj/{run_id(1)}/jobs/a?after=abc").status_code == 400


def test_job_output_txt_is_every_output_byte_as_plain_text(
    store: Store, client: TestClient
) -> None:
    store.add(1, jobs={"a": job_log(out("one\n"), out("two\n", "stderr"), out("<b>"))})
    response = client.get(f"/runs/proj/{run_id(1)}/jobs/a/output.txt")
    assert response.text == "one\ntwo\n<b>"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "url",
    [
        "/runs/..%2f..%2fetc",
        "/runs/..%2f..%2fetc/passwd",
        "/runs/proj/..%2f..%2fetc",
        "/runs/proj/..",
        "/runs/%2e%2e/x",
        "/runs/.hidden",
        "/runs/proj/latest/jobs/..%2f..%2fmeta.yml",
        "/runs/proj/latest/jobs/%2e%2e",
        "/runs/proj/nonexistent-run",
        "/runs/ghost",
        "/api/runs/..%2f..",
        "/api/runs/proj/..%2fmeta.yml",
        "/live/runs/proj/..%2f..",
        "/static/..%2fapp.py",
    ],
)
def test_path_traversal_and_unknown_names_are_404(
    store: Store, client: TestClient, url: str
) -> None:
    store.add(1, jobs={"a": job_log(out("x\n"))})
    response = client.get(url, follow_redirects=False)
    assert response.status_code == 404, url


def test_there_are_no_write_actions(store: Store, client: TestClient) -> None:
    store.add(1, jobs={"a": job_log()})
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for url in ("/", f"/runs/proj/{run_id(1)}", "/api/runs", f"/api/runs/proj/{run_id(1)}"):
            assert client.request(method, url).status_code == 405, (method, url)


def test_every_response_carries_the_security_headers(store: Store, client: TestClient) -> None:
    store.add(1, jobs={"a": job_log()})
    for url in ("/", f"/runs/proj/{run_id(1)}", "/api/runs", "/static/app.js", "/nope"):
        headers = client.get(url).headers
        assert headers["content-security-policy"] == CSP, url
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        assert headers["x-frame-options"] == "DENY"


def test_pages_hold_no_inline_script_or_style(store: Store, client: TestClient) -> None:
    store.add(1, state="active", jobs={"a": job_log(out("\x1b[1;32mok\x1b[0m\n"))})
    for url in ("/", f"/runs/proj/{run_id(1)}", f"/runs/proj/{run_id(1)}/jobs/a"):
        text = client.get(url).text
        assert re.findall(r"<script[^>]*>", text) == ['<script src="/static/app.js" defer>']
        assert " style=" not in text and "<style" not in text
        assert not re.search(r"\son[a-z]+=", text)  # no inline event handlers


def test_only_loopback_host_names_are_served_on_loopback(store: Store) -> None:
    app = create_app(store.state, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:8765") as local_client:
        assert local_client.get("/").status_code == 200
        assert local_client.get("/", headers={"host": "evil.example"}).status_code == 400
    app.state.web.index.close()


def test_api_repo_runs_is_what_quire_ci_runs_json_prints(store: Store, client: TestClient) -> None:
    for n in range(1, 26):
        store.add(n, state="failed" if n % 3 == 0 else "complete")
    expected = [
        s.model_dump(mode="json")
        for s in list_runs(RunStore("proj", root=store.state / "runs" / "proj"), 20)
    ]
    assert client.get("/api/runs/proj").json() == expected
    assert len(client.get("/api/runs/proj?limit=3").json()) == 3


def test_api_run_is_what_quire_ci_show_json_prints(store: Store, client: TestClient) -> None:
    store.add(4, container=True, jobs={"a": job_log()}, outputs={"a": {"k": [1, 2]}})
    run = RunStore("proj", root=store.state / "runs" / "proj").find(run_id(4))
    expected = orjson.loads(orjson.dumps(details(run).model_dump(mode="json")))
    assert client.get(f"/api/runs/proj/{run_id(4)}").json() == expected


def test_api_runs_pages_the_index_with_filters(store: Store, client: TestClient) -> None:
    for n in range(1, 8):
        store.add(n, repo="alpha" if n % 2 else "beta")
    body = client.get("/api/runs?repo=alpha&per_page=2&page=2").json()
    assert body["total"] == 4 and body["page"] == 2 and body["per_page"] == 2
    assert [r["id"] for r in body["runs"]] == [run_id(3), run_id(1)]
    assert {r["repo"] for r in body["runs"]} == {"alpha"}


def test_stream_of_a_finished_run_sends_jobs_output_and_end(
    store: Store, client: TestClient
) -> None:
    log = job_log(out("<i>hello</i>\n"))
    store.add(1, jobs={"a": log})
    with client.stream("GET", f"/live/runs/proj/{run_id(1)}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    events = re.findall(r"event: (\w+)\ndata: (.*)\n", body)
    names = [name for name, _ in events]
    assert names == ["jobs", "output", "end"]
    output = orjson.loads(events[1][1])
    assert output["job"] == "a" and output["offset"] == len(log)
    jobs = orjson.loads(events[0][1])
    assert "exit code" in jobs["facts"] and 'data-job="a"' in jobs["html"]
    assert "&lt;i&gt;hello&lt;/i&gt;" in output["html"]


def test_stream_resumes_from_the_offsets_the_page_showed(store: Store, client: TestClient) -> None:
    first = line("sh-start", cmd="x") + out("seen already\n")
    store.add(1, jobs={"a": first + out("new line\n")})
    offsets = orjson.dumps({"a": len(first)}).decode()
    with client.stream(
        "GET", f"/live/runs/proj/{run_id(1)}", params={"offsets": offsets}
    ) as response:
        body = "".join(response.iter_text())
    assert "new line" in body and "seen already" not in body


def test_stream_rejects_malformed_offsets_and_unknown_jobs(
    store: Store, client: TestClient
) -> None:
    store.add(1, jobs={"a": job_log()})
    url = f"/live/runs/proj/{run_id(1)}"
    assert client.get(url, params={"offsets": "[1]"}).status_code == 400
    assert client.get(url, params={"offsets": '{"a": -5}'}).status_code == 400
    assert client.get(url, params={"job": "../../x"}).status_code == 404


def test_runs_stream_sends_the_list_when_a_run_appears(store: Store, client: TestClient) -> None:
    store.add(1)
    with client.stream("GET", "/live/runs") as response:
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")
        store.add(2, state="active")
        event = next(line for line in lines if line.startswith("data:"))
    assert run_id(2) in event and 'class=\\"state active\\"' in event


def test_ansi_palette_css_is_served(client: TestClient) -> None:
    css = client.get("/static/ansi.css")
    assert css.headers["content-type"].startswith("text/css")
    assert ".f1{color:#cd3131}" in css.text and ".b255{" in css.text


# --- found by breaking the code on purpose (see the commit) ---------------------------------------


def test_the_pager_links_only_to_pages_that_exist(store: Store, client: TestClient) -> None:
    for n in range(1, 61):
        store.add(n)
    first, last = client.get("/").text, client.get("/?page=2").text
    assert 'rel="next"' in first and 'rel="prev"' not in first
    assert 'rel="prev"' in last and 'rel="next"' not in last
    assert 'rel="next"' not in client.get("/?state=failed").text  # no runs: one empty page


def test_message_lines_in_a_job_log_are_escaped(store: Store, client: TestClient) -> None:
    store.add(1, jobs={"a": line("message", text="<img src=x onerror=alert(1)>")})
    for url in (f"/runs/proj/{run_id(1)}", f"/runs/proj/{run_id(1)}/jobs/a"):
        text = client.get(url).text
        assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text, url


def test_runs_stream_keeps_the_state_filter(store: Store, client: TestClient) -> None:
    store.add(1, state="failed")
    with client.stream("GET", "/live/runs", params={"state": "failed"}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")
        store.add(2, state="active")  # not failed: the filtered list does not change...
        store.add(3, state="failed")  # ...until this one
        event = next(line for line in lines if line.startswith("data:"))
    assert run_id(3) in event and run_id(1) in event and run_id(2) not in event


def test_hidden_job_directories_are_not_jobs(store: Store, client: TestClient) -> None:
    path = store.add(1, jobs={"a": job_log(out("x\n"))})
    Store.write_job(path, ".partial", "running")
    (path / "jobs" / ".partial" / "log.jsonl").write_bytes(job_log(out("hidden\n")))
    for url in ("jobs/.partial", "jobs/.partial/output.txt"):
        assert client.get(f"/runs/proj/{run_id(1)}/{url}").status_code == 404, url
    stream = client.get(f"/live/runs/proj/{run_id(1)}", params={"job": ".partial"})
    assert stream.status_code == 404


def test_a_run_being_staged_or_a_hidden_repository_is_not_served(
    store: Store, client: TestClient
) -> None:
    path = store.add(1, state="pending")
    staging = path.parent / f".{run_id(2)}.new"  # how the store stages a new run
    shutil.copytree(path, staging)
    shutil.copytree(store.state / "runs" / "proj", store.state / "runs" / ".trash")
    assert client.get(f"/runs/proj/.{run_id(2)}.new").status_code == 404
    assert client.get(f"/api/runs/proj/.{run_id(2)}.new").status_code == 404
    assert client.get(f"/runs/.trash/{run_id(1)}").status_code == 404
    assert client.get("/api/runs/.trash").status_code == 404
    listed = client.get("/").text
    assert ".trash" not in listed and f".{run_id(2)}" not in listed


def test_a_job_page_paged_back_to_its_end_is_at_the_tail(store: Store, client: TestClient) -> None:
    log = job_log(out("only\n"))
    store.add(1, state="active", jobs={"a": log})
    text = client.get(f"/runs/proj/{run_id(1)}/jobs/a?before={len(log)}").text
    assert 'rel="next"' not in text
    assert f'data-live="/live/runs/proj/{run_id(1)}?job=a"' in text


def test_api_runs_pages_hold_at_most_500_runs(store: Store, client: TestClient) -> None:
    store.add(1)
    assert client.get("/api/runs?per_page=501").json()["per_page"] == 500


def test_a_cancelled_run_shows_as_cancelled_by_whom_in_the_list_and_on_its_page(
    store: Store, client: TestClient
) -> None:
    store.add(1, state="cancelled")
    store.add(2, state="failed")
    listed = client.get("/?state=cancelled").text
    assert re.findall(r'data-run="([^"]+)"', listed) == [run_id(1)]
    assert '<span class="state cancelled">cancelled</span> <span class="muted">by alice</span>' in (
        listed
    )
    page = client.get(f"/runs/proj/{run_id(1)}").text
    assert "<dt>cancelled</dt><dd>by alice at " in page
    assert 'class="state cancelled"' in page


def test_run_page_shows_a_schedule_and_the_notifications_sent(
    store: Store, client: TestClient
) -> None:
    from datetime import UTC, datetime

    from quire.ci.store.deliveries import Attempt, Delivery, RunNotifications
    from quire.ci.store.records import RunMeta, Trigger, read_record, write_record

    path = store.add(8, state="failed")
    meta = read_record(path / "meta.yml", RunMeta)
    due = datetime(2026, 1, 6, 3, 0, tzinfo=UTC)
    meta.trigger = Trigger(kind="schedule", schedule="0 3 * * *", due_at=due)
    write_record(path / "meta.yml", meta)
    attempts = [
        Attempt(at=due, ok=False, detail="cannot reach it: <refused>"),
        Attempt(at=due, ok=True, detail="HTTP 204"),
    ]
    delivery = Delivery(target="webhook https://h #12345678", event="failed", attempts=attempts)
    delivery.state = "delivered"
    write_record(path / "notifications.yml", RunNotifications(deliveries=[delivery]))
    text = client.get(f"/runs/proj/{run_id(8)}").text
    assert "schedule <code>0 3 * * *</code>" in text
    assert "Notifications</h2>" in text
    assert "<td>webhook https://h #12345678</td><td>failed</td><td>delivered</td><td>2</td>" in text
    assert "<td>HTTP 204</td>" in text


def test_a_mirrored_runs_worker_is_named_in_the_list_on_its_page_and_in_the_json(
    store: Store, client: TestClient
) -> None:
    from quire.ci.store.records import WorkerInfo, write_record

    mirrored = store.add(1, repo="alpha")
    write_record(mirrored / "worker.yml", WorkerInfo(name="build-7", state_dir="/w/state"))
    store.add(2, repo="alpha")  # a run of this machine's own: no worker shown
    page = client.get("/").text
    rows = {rid: row for rid, row in re.findall(r'data-run="([^"]+)">(.*?)</tr>', page, re.S)}
    assert "on build-7" in rows[run_id(1)] and "worker" not in rows[run_id(2)]
    assert '<dd class="worker">build-7</dd>' in client.get(f"/runs/alpha/{run_id(1)}").text
    assert "build-7" not in client.get(f"/runs/alpha/{run_id(2)}").text
    api = {r["id"]: r["worker"] for r in client.get("/api/runs").json()["runs"]}
    assert api == {run_id(1): "build-7", run_id(2): None}
