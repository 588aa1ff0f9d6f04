"""The web page's actions through Starlette's TestClient: logging in and out, re-run, cancel,
run a ref, each over a form (CSRF) and over the JSON API (bearer token), with every way of
being refused; login throttling on a fake clock; `anonymous = "none"`; badges."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from quire.ci.store.records import RunMeta, Trigger, read_record, write_record
from quire.errors import UsageError
from quire.paths import state_dir
from quire.service.actions import is_ref_name
from quire.service.install import install
from quire.service.queue import Entry, Queue, queue_path, repository_name
from quire.web.accounts import SqliteAccounts
from quire.web.app import create_app
from quire.web.auth import Anonymous, Throttle
from quire.web.server import serve
from tests.helpers import git, make_repo
from tests.unit.test_web_support import Store, run_id

# argon2 at its cheapest: these tests check who may do what, not argon2's cost.
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    state: Path
    bare: Path
    repo: str  # the store's name of the bare repository
    sha: str
    store: Store
    accounts: SqliteAccounts
    clock: Clock
    operator_token: str
    viewer_token: str

    def app(self, anonymous: Anonymous = "read") -> TestClient:
        app = create_app(
            self.state, accounts=self.accounts, anonymous=anonymous, throttle=Throttle(self.clock)
        )
        return TestClient(app, base_url="http://127.0.0.1")

    def add_run(self, n: int, state: str = "complete", **changes: object) -> str:
        path = self.store.add(n, repo=self.repo, state=state)
        meta = read_record(path / "meta.yml", RunMeta)
        fields = {"git_dir": str(self.bare), "sha": self.sha, "revision": self.sha, **changes}
        write_record(path / "meta.yml", RunMeta.model_validate({**meta.model_dump(), **fields}))
        return run_id(n)

    def queue_rows(self) -> list[Entry]:
        with Queue(queue_path(self.state)) as queue:
            return queue.active() + queue.recent(100)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    state = state_dir()
    work = tmp_path / "proj"
    sha = make_repo(work, {"README": "hi\n"}, bare_clone=True)
    git(work, "tag", "v1")
    git(work, "push", "-q", str(tmp_path / "proj.git"), "v1")
    bare = tmp_path / "proj.git"
    install(bare, [], state)
    accounts = SqliteAccounts(state / "accounts.sqlite3", hasher=HASHER)
    accounts.add_user("olive", "operator", "op-secret")
    accounts.add_user("vic", "viewer", "view-secret")
    found = Site(
        state=state,
        bare=bare,
        repo=repository_name(str(bare)),
        sha=sha,
        store=Store(state),
        accounts=accounts,
        clock=Clock(),
        operator_token=accounts.create_token("olive"),
        viewer_token=accounts.create_token("vic"),
    )
    yield found
    accounts.close()


@pytest.fixture
def client(site: Site) -> Iterator[TestClient]:
    with site.app() as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_in(client: TestClient, name: str, password: str) -> str:
    """Log in; returns the session's CSRF token, read from a page as a browser would."""
    response = client.post(
        "/login", data={"username": name, "password": password}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/").text)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found[1]


# --- the JSON API, with every kind of credentials ---------------------------------------------


def test_api_rerun_with_an_operators_token_queues_the_same_revision_ref_and_executor(
    site: Site, client: TestClient
) -> None:
    original = site.add_run(1, executor="docker")
    response = client.post(
        f"/api/runs/{site.repo}/{original}/rerun", headers=bearer(site.operator_token)
    )
    assert response.status_code == 200, response.text
    (row,) = site.queue_rows()
    assert response.json() == {"run": row.run_id}
    assert (row.git_dir, row.ref, row.sha, row.executor) == (
        str(site.bare),
        "refs/heads/main",
        site.sha,
        "docker",
    )
    assert row.trigger_json is not None
    assert Trigger.model_validate_json(row.trigger_json) == Trigger(
        kind="rerun", by="olive", rerun_of=original
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("viewer", 403),
        ({"Authorization": "Bearer quire_00000000_" + "x" * 43}, 403),
        ({"Authorization": "Bearer nonsense"}, 403),
        ({"Authorization": "Basic b2xpdmU6b3Atc2VjcmV0"}, 403),
        ({}, 401),
    ],
    ids=["viewer", "wrong-token", "malformed-token", "basic-auth", "none"],
)
@pytest.mark.parametrize("action", ["rerun", "cancel", "start"])
def test_api_actions_are_refused_without_an_operators_token_and_change_nothing(
    site: Site, client: TestClient, headers: object, status: int, action: str
) -> None:
    original = site.add_run(1)
    queued = client.post(
        f"/api/runs/{site.repo}/{original}/rerun", headers=bearer(site.operator_token)
    ).json()["run"]
    before = site.queue_rows()
    sent = bearer(site.viewer_token) if headers == "viewer" else headers
    assert isinstance(sent, dict)
    url = {
        "rerun": f"/api/runs/{site.repo}/{original}/rerun",
        "cancel": f"/api/runs/{site.repo}/{queued}/cancel",
        "start": f"/api/repos/{site.repo}/runs",
    }[action]
    response = client.post(url, headers=sent, json={"ref": "main"})
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert site.queue_rows() == before
    assert not (site.state / "runs" / site.repo / "cancelled").exists()


def test_api_start_runs_a_branch_or_a_tag_of_the_bare_repository(
    site: Site, client: TestClient
) -> None:
    site.add_run(1)
    branch = client.post(
        f"/api/repos/{site.repo}/runs", json={"ref": "main"}, headers=bearer(site.operator_token)
    )
    tag = client.post(
        f"/api/repos/{site.repo}/runs", json={"ref": "v1"}, headers=bearer(site.operator_token)
    )
    assert branch.status_code == 200 and tag.status_code == 200, (branch.text, tag.text)
    rows = {row.run_id: row for row in site.queue_rows()}
    assert rows[branch.json()["run"]].ref == "refs/heads/main"
    assert rows[tag.json()["run"]].ref == "refs/tags/v1"
    row = rows[branch.json()["run"]]
    assert row.sha == site.sha and row.executor is None  # the worker chooses, as for a push
    assert row.trigger_json is not None
    assert Trigger.model_validate_json(row.trigger_json) == Trigger(kind="manual", by="olive")


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"ref": "nope"}, 409, "no branch or tag 'nope'"),
        ({"ref": "--upload-pack=x"}, 409, "no branch or tag"),
        ({"ref": "refs/notes/ci"}, 409, "no branch or tag"),
        # Revision syntax is not a ref: a tree, a blob, a parent or a reflog entry of one
        # would be queued under a ref name that does not exist.
        ({"ref": "main^{tree}"}, 409, "no branch or tag"),
        ({"ref": "main:README"}, 409, "no branch or tag"),
        ({"ref": "main~0"}, 409, "no branch or tag"),
        ({"ref": "main@{0}"}, 409, "no branch or tag"),
        ({"ref": "v1^{}"}, 409, "no branch or tag"),
        ({"ref": "refs/heads/main^{commit}"}, 409, "no branch or tag"),
        ({"ref": "refs/heads/../tags/v1"}, 409, "no branch or tag"),
        ({"ref": "main\x00"}, 409, "no branch or tag"),
        ({}, 400, '{"ref": "main"}'),
        ({"ref": 3}, 400, '{"ref": "main"}'),
    ],
)
def test_api_start_refuses_what_is_not_a_branch_or_tag(
    site: Site, client: TestClient, body: dict[str, object], status: int, says: str
) -> None:
    site.add_run(1)
    response = client.post(
        f"/api/repos/{site.repo}/runs", json=body, headers=bearer(site.operator_token)
    )
    assert response.status_code == status
    assert says in response.json()["error"]
    assert site.queue_rows() == []


def test_api_start_refuses_a_repository_without_quires_hook(site: Site, client: TestClient) -> None:
    site.add_run(1)
    (site.bare / "hooks" / "post-receive").unlink()
    response = client.post(
        f"/api/repos/{site.repo}/runs", json={"ref": "main"}, headers=bearer(site.operator_token)
    )
    assert response.status_code == 409
    assert "quire ci hook install" in response.json()["error"]


def test_api_cancel_of_a_queued_run_records_it_cancelled_by_whom(
    site: Site, client: TestClient
) -> None:
    original = site.add_run(1)
    queued = client.post(
        f"/api/runs/{site.repo}/{original}/rerun", headers=bearer(site.operator_token)
    ).json()["run"]
    response = client.post(
        f"/api/runs/{site.repo}/{queued}/cancel", headers=bearer(site.operator_token)
    )
    assert response.json() == {"run": queued, "state": "cancelled"}
    (row,) = site.queue_rows()
    assert row.outcome == "cancelled"
    page = client.get(f"/runs/{site.repo}/{queued}").text
    assert "cancelled" in page and "by olive" in page
    assert f're-run of <a href="/runs/{site.repo}/{original}">{original}</a> by olive' in page
    again = client.post(
        f"/api/runs/{site.repo}/{queued}/cancel", headers=bearer(site.operator_token)
    )
    assert again.status_code == 409


def test_api_cancel_of_another_repositorys_run_is_refused(site: Site, client: TestClient) -> None:
    original = site.add_run(1)
    queued = client.post(
        f"/api/runs/{site.repo}/{original}/rerun", headers=bearer(site.operator_token)
    ).json()["run"]
    site.store.add(2, repo="other")
    response = client.post(f"/api/runs/other/{queued}/cancel", headers=bearer(site.operator_token))
    assert response.status_code == 409
    assert site.queue_rows()[0].state == "queued"


def test_a_dirty_run_cannot_be_run_again(site: Site, client: TestClient) -> None:
    original = site.add_run(1, dirty=True)
    response = client.post(
        f"/api/runs/{site.repo}/{original}/rerun", headers=bearer(site.operator_token)
    )
    assert response.status_code == 409
    assert "--dirty" in response.json()["error"]


def test_actions_on_unknown_or_traversing_names_are_404(site: Site, client: TestClient) -> None:
    site.add_run(1)
    for url in (
        f"/api/runs/{site.repo}/{run_id(9)}/rerun",
        f"/api/runs/nope/{run_id(1)}/rerun",
        "/api/runs/..%2f..%2fetc/x/cancel",
        "/api/repos/..%2fetc/runs",
    ):
        response = client.post(url, headers=bearer(site.operator_token), json={"ref": "main"})
        assert response.status_code == 404, url
    assert site.queue_rows() == []


# --- forms, sessions and CSRF ------------------------------------------------------------------


def test_an_operator_logs_in_and_re_runs_from_the_run_page(site: Site, client: TestClient) -> None:
    original = site.add_run(1)
    csrf = log_in(client, "olive", "op-secret")
    page = client.get(f"/runs/{site.repo}/{original}").text
    assert 'class="rerun"' in page and "olive" in page
    assert "no worker is running" in page  # said to operators, beside the buttons
    response = client.post(
        f"/runs/{site.repo}/{original}/rerun", data={"csrf": csrf}, follow_redirects=False
    )
    assert response.status_code == 303
    (row,) = site.queue_rows()
    assert response.headers["location"] == f"/runs/{site.repo}/{row.run_id}"
    queued = client.get(response.headers["location"]).text
    assert "queued" in queued and "no worker is running" in queued
    assert '<meta http-equiv="refresh" content="2">' in queued


def test_an_operator_starts_a_branch_from_the_repository_page(
    site: Site, client: TestClient
) -> None:
    site.add_run(1)
    csrf = log_in(client, "olive", "op-secret")
    assert 'action="/runs/' + site.repo + '/start"' in client.get(f"/runs/{site.repo}").text
    response = client.post(
        f"/runs/{site.repo}/start", data={"csrf": csrf, "ref": "main"}, follow_redirects=False
    )
    assert response.status_code == 303
    (row,) = site.queue_rows()
    assert row.ref == "refs/heads/main"


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
def test_a_form_without_the_sessions_csrf_token_changes_nothing(
    site: Site, client: TestClient, csrf: str | None
) -> None:
    original = site.add_run(1)
    log_in(client, "olive", "op-secret")
    data = {} if csrf is None else {"csrf": csrf}
    for url in (f"/runs/{site.repo}/{original}/rerun", f"/runs/{site.repo}/start"):
        response = client.post(url, data={**data, "ref": "main"}, follow_redirects=False)
        assert response.status_code == 403, url
        assert "CSRF" in response.text
    assert site.queue_rows() == []


def test_a_cross_site_post_is_refused_even_with_the_csrf_token(
    site: Site, client: TestClient
) -> None:
    original = site.add_run(1)
    csrf = log_in(client, "olive", "op-secret")
    response = client.post(
        f"/runs/{site.repo}/{original}/rerun",
        data={"csrf": csrf},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert site.queue_rows() == []


def test_a_viewer_sees_no_buttons_and_a_forged_post_from_their_session_changes_nothing(
    site: Site, client: TestClient
) -> None:
    original = site.add_run(1)
    site.add_run(2, state="active")
    csrf = log_in(client, "vic", "view-secret")
    for url in (f"/runs/{site.repo}/{original}", f"/runs/{site.repo}/{run_id(2)}"):
        page = client.get(url).text
        assert "vic" in page and "Log out" in page
        assert 'class="rerun"' not in page and 'class="cancel"' not in page
    repo_page = client.get(f"/runs/{site.repo}").text
    assert "/start" not in repo_page and "no worker is running" not in repo_page
    response = client.post(
        f"/runs/{site.repo}/{original}/rerun", data={"csrf": csrf}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "vic is a viewer" in response.text
    assert site.queue_rows() == []


def test_anonymous_visitors_see_no_buttons_and_their_posts_are_401(
    site: Site, client: TestClient
) -> None:
    original = site.add_run(1)
    page = client.get(f"/runs/{site.repo}/{original}").text
    assert 'class="rerun"' not in page and 'href="/login"' in page
    assert "no worker is running" not in page  # a page used without workers never says so
    response = client.post(f"/runs/{site.repo}/{original}/rerun", follow_redirects=False)
    assert response.status_code == 401
    assert site.queue_rows() == []


def test_a_running_runs_page_offers_cancel_a_finished_ones_does_not(
    site: Site, client: TestClient
) -> None:
    site.add_run(1)
    site.add_run(2, state="active")
    log_in(client, "olive", "op-secret")
    assert 'class="cancel"' not in client.get(f"/runs/{site.repo}/{run_id(1)}").text
    assert 'class="cancel"' in client.get(f"/runs/{site.repo}/{run_id(2)}").text


def test_the_session_cookie_is_httponly_lax_and_secure_only_over_https(site: Site) -> None:
    with site.app() as plain:
        response = plain.post(
            "/login", data={"username": "olive", "password": "op-secret"}, follow_redirects=False
        )
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert "max-age=1209600" in cookie  # two weeks, as the session on the server
    app = create_app(site.state, accounts=site.accounts, throttle=Throttle(site.clock))
    with TestClient(app, base_url="https://127.0.0.1") as secure:
        response = secure.post(
            "/login", data={"username": "olive", "password": "op-secret"}, follow_redirects=False
        )
    assert "secure" in response.headers["set-cookie"].lower()


def test_the_session_and_csrf_tokens_are_not_kept_in_clear(site: Site, client: TestClient) -> None:
    csrf = log_in(client, "olive", "op-secret")
    cookie = client.cookies["quire_session"]
    stored = (site.state / "accounts.sqlite3").read_bytes()
    assert cookie.encode() not in stored
    assert site.operator_token.encode() not in stored
    assert b"op-secret" not in stored
    assert csrf  # the CSRF token is the session's own: useless without the cookie


def test_logout_ends_the_session_and_needs_the_csrf_token(site: Site, client: TestClient) -> None:
    site.add_run(1)
    csrf = log_in(client, "olive", "op-secret")
    cookie = client.cookies["quire_session"]
    refused = client.post("/logout", data={"csrf": "forged"}, follow_redirects=False)
    assert refused.status_code == 403
    assert "Log out" in client.get("/").text
    done = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    assert site.accounts.session(cookie) is None
    client.cookies.set("quire_session", cookie)  # replayed: worth nothing now
    assert 'href="/login"' in client.get("/").text


def test_a_wrong_password_is_401_and_says_so_without_saying_which(
    site: Site, client: TestClient
) -> None:
    wrong = client.post("/login", data={"username": "olive", "password": "nope"})
    unknown = client.post("/login", data={"username": "nobody", "password": "nope"})
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "wrong user name or password" in response.text
    assert "quire_session" not in client.cookies


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_login_only_sends_the_browser_back_to_this_server(
    site: Site, client: TestClient, target: str
) -> None:
    response = client.post(
        "/login",
        data={"username": "olive", "password": "op-secret", "next": target},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_failed_logins_are_slowed_per_user(site: Site, client: TestClient) -> None:
    def attempt(password: str) -> int:
        return client.post(
            "/login", data={"username": "olive", "password": password}, follow_redirects=False
        ).status_code

    assert [attempt("bad") for _ in range(3)] == [401, 401, 401]  # three are free
    assert attempt("op-secret") == 429  # then a wait of 1 s, in which nothing is checked
    site.clock.now += 1.1
    assert attempt("bad") == 401  # the fourth failure: a wait of 2 s
    response = client.post("/login", data={"username": "olive", "password": "op-secret"})
    assert response.status_code == 429  # the right password, but too soon
    assert "try again in 3 s" in response.text and response.headers["retry-after"] == "3"
    site.clock.now += 2.5
    assert attempt("op-secret") == 303


def test_failed_logins_are_slowed_per_address_across_user_names(
    site: Site, client: TestClient
) -> None:
    for name in ("a", "b", "c"):
        assert client.post("/login", data={"username": name, "password": "x"}).status_code == 401
    response = client.post("/login", data={"username": "olive", "password": "op-secret"})
    assert response.status_code == 429  # olive never failed; this address did
    site.clock.now += 1.1
    assert (
        client.post(
            "/login", data={"username": "olive", "password": "op-secret"}, follow_redirects=False
        ).status_code
        == 303
    )


def test_throttle_waits_double_and_are_capped() -> None:
    clock = Clock()
    throttle = Throttle(clock)
    waits = []
    for _ in range(14):
        throttle.failed(["user:x"])
        waits.append(throttle.wait_s(["user:x"]))
    assert waits[:5] == [0.0, 0.0, 1.0, 2.0, 4.0]
    assert waits[-1] == 300.0
    throttle.succeeded(["user:x"])
    assert throttle.wait_s(["user:x"]) == 0.0


# --- anonymous = "none" -----------------------------------------------------------------------


def test_with_anonymous_none_visitors_log_in_first(site: Site) -> None:
    original = site.add_run(1)
    with site.app(anonymous="none") as client:
        page = client.get(f"/runs/{site.repo}/{original}?x=1", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == (
            f"/login?next=%2Fruns%2F{site.repo}%2F{original}%3Fx%3D1"
        )
        for url in ("/api/runs", f"/live/runs/{site.repo}/{original}", f"/badge/{site.repo}.svg"):
            assert client.get(url).status_code == 401, url
        assert client.get("/login").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/api/runs", headers=bearer(site.viewer_token)).status_code == 200
        log_in(client, "vic", "view-secret")
        assert client.get(f"/runs/{site.repo}/{original}").status_code == 200
        assert client.get(f"/badge/{site.repo}.svg").status_code == 200


def test_a_wrong_token_is_refused_on_reads_too(site: Site, client: TestClient) -> None:
    response = client.get("/api/runs", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 403


# --- badges -----------------------------------------------------------------------------------


def test_badges_say_passing_failing_running_or_unknown_per_branch(
    site: Site, client: TestClient
) -> None:
    site.add_run(1, state="failed", ref="refs/heads/main")
    site.add_run(2, state="complete", ref="refs/heads/main")
    site.add_run(3, state="cancelled", ref="refs/heads/main")
    site.add_run(4, state="failed", ref="refs/heads/dev")
    site.add_run(5, state="complete", ref="refs/heads/wip")
    site.add_run(6, state="active", ref="refs/heads/wip")

    def badge(query: str) -> str:
        response = client.get(f"/badge/{site.repo}.svg{query}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/svg+xml"
        assert response.headers["cache-control"] == "max-age=30, must-revalidate"
        found = re.search(r"<title>quire: (\w+)</title>", response.text)
        assert found, response.text
        return found[1]

    assert badge("?branch=main") == "passing"  # the cancelled run says nothing
    assert badge("?branch=dev") == "failing"
    assert badge("?branch=wip") == "running"
    assert badge("?branch=none") == "unknown"
    assert badge("") == "running"
    assert "<title>quire: unknown</title>" in client.get("/badge/never-ran.svg").text
    assert client.get("/badge/..%2fetc.svg").status_code == 404
    assert client.get(f"/badge/{site.repo}").status_code == 404


# --- serving beyond loopback -------------------------------------------------------------------


def test_serve_beyond_loopback_without_a_user_refuses_and_says_how_to_add_one(
    tmp_path: Path,
) -> None:
    with pytest.raises(UsageError, match="quire ci user add NAME --role operator"):
        serve(tmp_path / "state", "0.0.0.0", 0)


def test_a_session_may_call_the_api_with_its_csrf_token_in_a_header(
    site: Site, client: TestClient
) -> None:
    original = site.add_run(1)
    csrf = log_in(client, "olive", "op-secret")
    url = f"/api/runs/{site.repo}/{original}/rerun"
    assert client.post(url).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert site.queue_rows() == []
    response = client.post(url, headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200
    assert [row.run_id for row in site.queue_rows()] == [response.json()["run"]]


class CountingHasher(PasswordHasher):
    verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        CountingHasher.verified += 1
        return super().verify(hash, password)


def test_an_unknown_user_costs_the_same_argon2_check_as_a_known_one(tmp_path: Path) -> None:
    hasher = CountingHasher(time_cost=1, memory_cost=8, parallelism=1)
    with SqliteAccounts(tmp_path / "a.sqlite3", hasher=hasher) as accounts:
        accounts.add_user("olive", "viewer", "pw")
        assert accounts.check_password("nobody", "pw") is None
        assert CountingHasher.verified == 1
        assert accounts.check_password("olive", "wrong") is None
        assert CountingHasher.verified == 2


def test_the_page_knows_whether_a_worker_listens(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.service.actions import workers_listening
    from quire.service.wake import Listener

    site.state.mkdir(parents=True, exist_ok=True)
    assert workers_listening(site.state) is False
    with Listener(site.state):
        assert workers_listening(site.state) is True
    assert workers_listening(site.state) is False  # its marker went with it
    (site.state / "queue.wake" / "999999999").touch()  # a kill -9'd worker's marker
    assert workers_listening(site.state) is False


def test_on_postgresql_the_page_asks_the_worker_registry(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.service import actions
    from quire.service.errors import QueueUnavailable

    live: list[object] = []

    class Registry:
        def __enter__(self) -> Registry:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def workers(self) -> list[object]:
            if live == ["down"]:
                raise QueueUnavailable("cannot read the queue database postgresql://db/quire")
            return live

    monkeypatch.setenv("QUIRE_DATABASE_URL", "postgresql://db.example/quire")
    monkeypatch.setattr(actions, "open_queue", lambda state: Registry())
    assert actions.workers_listening(site.state) is False  # no live worker on any machine
    live.append("build-1")
    assert actions.workers_listening(site.state) is True
    live[:] = ["down"]
    assert actions.workers_listening(site.state) is None  # not knowable now: nothing said


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/main",
        "refs/heads/feature/x-1",
        "refs/tags/v1.2",
        "refs/heads/a@b",
        "refs/heads/main^{tree}",
        "refs/heads/main~1",
        "refs/heads/a:b",
        "refs/heads/a..b",
        "refs/heads/a@{1}",
        "refs/heads/a b",
        "refs/heads/a\tb",
        "refs/heads/a*",
        "refs/heads/a?",
        "refs/heads/a[",
        "refs/heads/a\\b",
        "refs/heads/.hidden",
        "refs/heads/x/.y",
        "refs/heads/a.lock",
        "refs/heads/a.lock/b",
        "refs/heads/a/",
        "refs/heads/a.",
        "refs/heads//a",
        "refs/heads/a\x7f",
    ],
)
def test_is_ref_name_agrees_with_git_check_ref_format(ref: str) -> None:
    git_says = subprocess.run(["git", "check-ref-format", ref], check=False).returncode == 0
    assert is_ref_name(ref) == git_says


def test_tries_sent_at_once_count_before_their_passwords_are_checked() -> None:
    # argon2 runs in a worker thread: tries sent together all passed the wait check before
    # the first of them failed, so a script could try any number of passwords at once.
    throttle = Throttle(Clock())
    keys = ["user:olive", "addr:1.2.3.4"]
    assert [throttle.attempt(keys) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.attempt(keys) > 0  # three in flight, none answered yet


def test_a_good_password_takes_back_its_tries_count() -> None:
    throttle = Throttle(Clock())
    keys = ["user:olive", "addr:1.2.3.4"]
    throttle.failed(keys[1:])
    throttle.failed(keys[1:])
    for _ in range(5):  # many good logins from a shared address (a proxy) lock nobody out
        assert throttle.attempt(keys) == 0.0
        throttle.passed(cleared=keys[:1], kept=keys[1:])
    throttle.failed(keys[1:])
    assert throttle.attempt(keys) > 0  # the two failures before still count: now three


def test_a_login_posted_from_another_site_is_refused(site: Site, client: TestClient) -> None:
    # Login CSRF: another site's form would log the visitor in as the attacker's user,
    # whose session then sees (and records) what the visitor does.
    response = client.post(
        "/login",
        data={"username": "vic", "password": "view-secret"},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    same_site = client.post(
        "/login",
        data={"username": "vic", "password": "view-secret"},
        headers={"Origin": "http://127.0.0.1"},
        follow_redirects=False,
    )
    assert same_site.status_code == 303 and "set-cookie" in same_site.headers


def test_a_run_whose_commit_is_gone_cannot_be_run_again(site: Site, client: TestClient) -> None:
    # A force-push and git gc took the commit away: queued, it would only fail in a worker.
    gone = "0123456789abcdef0123456789abcdef01234567"
    original = site.add_run(1, sha=gone, revision=gone)
    response = client.post(
        f"/api/runs/{site.repo}/{original}/rerun", headers=bearer(site.operator_token)
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert f"commit {gone}" in error and str(site.bare) in error
    assert site.queue_rows() == []


def test_a_post_from_a_page_with_no_origin_of_its_own_is_refused_when_it_is_cross_site(
    site: Site, client: TestClient
) -> None:
    # Our pages send Origin: null (Referrer-Policy: no-referrer), and so does another site's
    # sandboxed frame; Sec-Fetch-Site tells them apart. The login form has no CSRF token.
    def post(site_says: str) -> int:
        return client.post(
            "/login",
            data={"username": "vic", "password": "view-secret"},
            headers={"Origin": "null", "Sec-Fetch-Site": site_says},
            follow_redirects=False,
        ).status_code

    assert post("cross-site") == 403
    assert post("same-site") == 403
    assert post("same-origin") == 303


def test_a_badge_shown_to_a_logged_in_reader_is_kept_by_no_shared_cache(site: Site) -> None:
    # With anonymous = "none" a proxy or CDN that kept it would show it to anybody.
    site.add_run(1)
    with site.app(anonymous="none") as client:
        response = client.get(f"/badge/{site.repo}.svg", headers=bearer(site.viewer_token))
        assert response.status_code == 200
        assert "private" in response.headers["cache-control"]
    with site.app() as client:  # anonymous reading: a README's image proxy may keep it
        assert "private" not in client.get(f"/badge/{site.repo}.svg").headers["cache-control"]
