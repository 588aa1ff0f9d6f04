"""Artifacts with the run index on PostgreSQL: a worker keeps them, and a machine that ran
nothing (its own state directory, sharing only the database) copies them out with `quire ci
artifacts` and downloads them from its own `quire ci serve`.

The server, the workers and the reader are test_run_index_postgres.py's; without
PostgreSQL the tests are skipped, unless QUIRE_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import terminate
from tests.integration import test_run_index_postgres as index
from tests.integration import test_workers_postgres as workers
from tests.integration.test_worker import push, pushable, wait_for
from tests.integration.test_workers_postgres import all_done, machine_worker, rows

pytestmark = pytest.mark.integration

server = workers.server
database = workers.database
no_container_left_behind = workers.no_container_left_behind

# 3 MiB: more than one of the index's 1 MiB chunks.
PAYLOAD = bytes(range(256)) * (3 * 4096)
PIPELINE = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def build(rt: Runtime):
    rt.sh("mkdir -p dist && cp payload.bin dist/app.whl", check=True)
    rt.artifact("dist/app.whl")
"""


def test_a_reader_that_ran_nothing_copies_and_serves_a_workers_artifacts(
    tmp_path: Path, database: str
) -> None:
    files: dict[str, str | bytes] = {".quire/ci.py": PIPELINE, "payload.bin": PAYLOAD}
    _bare, work = pushable(tmp_path, "kept", files)
    with machine_worker(tmp_path, "builder") as proc:
        push(work, "HEAD:refs/heads/main")
        wait_for(all_done(database, 1), "the run", proc=proc)
    (row,) = rows(database)
    digest = hashlib.sha256(PAYLOAD).hexdigest()

    def listed() -> bool:
        done = index.read(tmp_path, "ci", "artifacts", row.run_id, "--json")
        return done.returncode == 0 and [r["sha256"] for r in json.loads(done.stdout)] == [digest]

    wait_for(listed, "the artifact in the reader's mirror")
    out = tmp_path / "out"
    copied = index.read(tmp_path, "ci", "artifacts", row.run_id, "--out", str(out))
    assert copied.returncode == 0, copied.stderr
    assert (out / "build" / "app.whl").read_bytes() == PAYLOAD
    assert not (tmp_path / "reader" / "state" / "runs").exists()  # it ran nothing

    err_path = tmp_path / "serve.err"
    with err_path.open("w") as err:
        serve = subprocess.Popen(
            [*index.QUIRE, "ci", "serve", "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=index.reader_env(tmp_path),
            cwd=tmp_path / "reader" / "cwd",
        )
        try:
            wait_for(lambda: "http://" in err_path.read_text(), "the server's URL")
            found = re.search(r"http://\S+/", err_path.read_text())
            assert found is not None
            url = found.group(0)
            repo = json.loads(index.get(url + "api/runs"))["runs"][0]["repo"]
            page = index.get(f"{url}runs/{repo}/{row.run_id}")
            link = f"/runs/{repo}/{row.run_id}/artifacts/build/app.whl"
            assert f'href="{link}"' in page
            with urllib.request.urlopen(url + link.lstrip("/"), timeout=30) as got:
                assert got.read() == PAYLOAD
                assert got.headers["Content-Disposition"].startswith("attachment;")
                assert got.headers["X-Quire-Sha256"] == digest
        finally:
            terminate(serve)  # type: ignore[arg-type]
