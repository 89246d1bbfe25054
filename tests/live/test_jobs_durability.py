"""Async jobs across restarts and crashes, and whose they are (issue 15), on real servers
over one real database: queued and running jobs after a clean stop and after ``kill -9``
(attempts counted right), no acknowledged job lost by a ``kill -9`` in a burst of
submissions, and with API tokens: a job is its token's (another gets 404, admin sees all),
the token is checked again when the job runs, the queue limit per token, the quota counted
once."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.auth.test_guard import INFER
from tests.live import ROOT, live_server, wait_until
from tests.live.test_jobs import Client, jobs_env, repository, rows

LONG = rows(256)
"""A heavy job of half a second or more."""


def test_queued_jobs_survive_a_clean_stop_and_a_running_one_runs_again_after_kill_9(
    tmp_path: Path,
) -> None:
    root = repository(tmp_path)
    env = jobs_env(tmp_path)
    with live_server(root, env=env) as (url, _), Client(url) as client:
        stopped = [client.submit("heavy", LONG).json()["id"] for _ in range(3)]
        wait_until(lambda: client.job(stopped[0])["state"] == "running", "the first job to run")
    # A clean stop let the running job finish (within its grace) and left the others queued.
    with live_server(root, env=env) as (url, process), Client(url) as client:
        for job_id in stopped:
            job = client.finished(job_id)
            assert (job["state"], job["attempts"]) == ("succeeded", 1), job
        killed = [client.submit("heavy", LONG).json()["id"] for _ in range(3)]
        wait_until(lambda: client.job(killed[0])["state"] == "running", "the first job to run")
        process.kill()  # kill -9 while it runs
        process.wait()
    with live_server(root, env=env) as (url, _), Client(url) as client:
        done = [client.finished(job_id) for job_id in killed]
    assert [(j["state"], j["attempts"]) for j in done] == [
        ("succeeded", 2),  # it had started once, and ran again
        ("succeeded", 1),
        ("succeeded", 1),
    ]
    assert done[0]["error"] is None


def test_kill_9_in_a_burst_of_submissions_loses_no_job_that_got_its_202(tmp_path: Path) -> None:
    root = repository(tmp_path)
    env = jobs_env(tmp_path)
    acknowledged: list[str] = []
    lock = threading.Lock()
    with live_server(root, env=env) as (url, process):

        def submit_until_refused() -> None:
            with httpx.Client(base_url=url, timeout=10) as http:
                while True:
                    try:
                        response = http.post("/v2/models/tiny/jobs", json=INFER)
                    except httpx.TransportError:
                        return  # the server is gone
                    if response.status_code == 202:
                        with lock:
                            acknowledged.append(response.json()["id"])

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            clients = [pool.submit(submit_until_refused) for _ in range(8)]
            wait_until(lambda: len(acknowledged) >= 300, "300 acknowledged submissions", 60)
            process.kill()
            process.wait()
            for finished in clients:
                finished.result()
    with live_server(root, env=env) as (url, _), Client(url) as client:
        missing = [i for i in acknowledged if client.http.get(f"/v2/jobs/{i}").status_code != 200]
        assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged jobs lost"
        for job_id in acknowledged[-20:]:
            assert client.finished(job_id)["state"] == "succeeded"


class Tokens:
    """API tokens made through the admin API of a running server."""

    def __init__(self, url: str, admin: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"})

    def create(self, name: str, **fields: Any) -> str:
        body = {"name": name, "scopes": ["infer"], **fields}
        response = self.http.post("/admin/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def pause(self, name: str) -> None:
        assert self.http.post(f"/admin/tokens/{name}/pause").status_code == 200


@pytest.fixture
def guarded(tmp_path: Path) -> Any:
    env = {
        **jobs_env(tmp_path, max_queued_per_token="3"),
        "CINFER_AUTH__ENABLED": "true",
        "CINFER_AUTH__DATABASE": str(tmp_path / "db" / "cinfer.db"),
    }
    made = subprocess.run(
        [sys.executable, "-m", "server", "tokens", "create", "--name", "ops",
         "--scope", "admin,read,infer"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    admin = made.stdout.strip()
    with live_server(repository(tmp_path), env=env) as (url, _):
        tokens = Tokens(url, admin)
        try:
            yield url, admin, tokens
        finally:
            tokens.http.close()


def test_a_job_is_its_tokens_and_an_admins(guarded: Any) -> None:
    url, admin, tokens = guarded
    with (
        Client(url, tokens.create("alice")) as alice,
        Client(url, tokens.create("bob")) as bob,
        Client(url, admin) as ops,
        Client(url, tokens.create("tiny-only", models=["tiny"])) as limited,
    ):
        job = alice.finished(alice.submit().json()["id"])
        assert job["owner"] is not None and job["state"] == "succeeded"
        for method, path in [("GET", ""), ("GET", "/result"), ("GET", "/events"), ("DELETE", "")]:
            response = bob.http.request(method, f"/v2/jobs/{job['id']}{path}")
            assert response.status_code == 404, (method, path, response.text)
            assert response.json() == {"error": f'no job "{job["id"]}"'}
        assert job["id"] not in {j["id"] for j in bob.http.get("/v2/jobs").json()["jobs"]}
        with bob.socket() as socket:
            socket.send(orjson.dumps({"subscribe": [job["id"]]}).decode())
            assert orjson.loads(socket.recv(timeout=30)) == {"error": f'no job "{job["id"]}"'}
        assert job["id"] in {j["id"] for j in alice.http.get("/v2/jobs").json()["jobs"]}
        assert ops.job(job["id"])["id"] == job["id"]  # admin sees everyone's
        assert job["id"] in {j["id"] for j in ops.http.get("/v2/jobs").json()["jobs"]}
        # The token's model limits and the infer scope apply at submission...
        refused = limited.submit("heavy")
        assert refused.status_code == 403 and "may not use model 'heavy'" in refused.json()["error"]
        reader = Client(url, tokens.create("reader", scopes=["read"]))
        with reader:
            assert reader.submit().status_code == 403
            assert reader.http.get("/v2/jobs").status_code == 403
        assert httpx.post(f"{url}/v2/models/tiny/jobs", json=INFER).status_code == 401
        # ... and again when the job runs: paused meanwhile, its queued job fails.
        pauser = Client(url, tokens.create("pauser"))
        with pauser:
            for _ in range(3):
                ops.submit("heavy", LONG)
            waiting = pauser.submit("heavy", rows(1)).json()
            behind = alice.submit("heavy", LONG).json()
            tokens.pause("pauser")
            failed = ops.finished(waiting["id"])
            assert failed["state"] == "failed" and failed["error"] == "API token 'pauser' is paused"
        # Admin may cancel another's job.
        assert ops.http.delete(f"/v2/jobs/{behind['id']}").json()["state"] == "canceled"


def test_the_queue_limit_per_token_and_the_quota_counted_once(guarded: Any) -> None:
    url, admin, tokens = guarded
    with Client(url, tokens.create("filler")) as filler, Client(url, admin) as ops:
        queued = [filler.submit("heavy", LONG) for _ in range(3)]
        assert [r.status_code for r in queued] == [202, 202, 202]
        over = filler.submit("heavy", LONG)
        assert over.status_code == 429 and over.headers["retry-after"]
        assert "3 unfinished jobs" in over.json()["error"]
        assert ops.submit().status_code == 202  # the limit is per token
        assert filler.http.delete(f"/v2/jobs/{queued[2].json()['id']}").status_code == 200
        assert filler.submit().status_code == 202  # one finished (canceled): room for one
    # A job is one request of its token's quota: the submission; its run counts nothing.
    with (
        Client(url, tokens.create("metered", monthly_quota=2)) as metered,
        Client(url, admin) as ops,
    ):
        job = metered.submit().json()  # 1
        assert ops.finished(job["id"])["state"] == "succeeded"
        assert metered.http.get(f"/v2/jobs/{job['id']}/result").status_code == 200  # 2
        assert metered.http.get(f"/v2/jobs/{job['id']}").status_code == 429
