"""The jobs' store on a real SQLite file: moves that race, payload files, recovery, and a
file shared with the token database."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.auth.store import Database
from server.auth.tokens import TokenSpec
from server.jobs.job import Job, Request, Result, State
from server.jobs.store import JobStore

pytestmark = pytest.mark.anyio


def queued(job_id: str) -> Job:
    return Job(
        id=job_id, seq=0, owner=None, model="tiny", version=None, state=State.QUEUED,
        attempts=0, revision=1, created_at=1.0, started_at=None, finished_at=None, error=None,
        model_version=None, callback_url=None, callback_status=None, callback_attempts=0,
        callback_error=None,
    )  # fmt: skip


async def test_a_cancel_and_a_finish_that_race_have_one_winner(tmp_path: Path) -> None:
    async with JobStore(tmp_path / "jobs.db", inline_bytes=4) as store:
        await store.add(queued("a"), Request(b"{}", "application/json"))
        running = await store.start("a", 2.0)
        assert running is not None and (running.state, running.attempts) == (State.RUNNING, 1)
        assert await store.start("a", 2.0) is None  # started once
        canceled = await store.cancel("a", 3.0)
        assert canceled is not None and canceled.state is State.CANCELED
        assert canceled.revision == running.revision + 1
        # The run ends after the cancel: nothing of its result is kept.
        assert (
            await store.succeed("a", 4.0, "1", Result(b"a large answer", "application/json"))
            is None
        )
        assert await store.result("a") is None
        assert not (store.folder / "a.result").exists()
        assert (await store.get("a")).state is State.CANCELED  # type: ignore[union-attr]


async def test_large_payloads_are_files_and_orphans_are_swept_at_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with JobStore(path, inline_bytes=8) as store:
        await store.add(queued("small"), Request(b"{}", "application/json"))
        await store.add(queued("large"), Request(b"x" * 100, "image/png", None, "classification=2"))
        assert sorted(p.name for p in store.folder.iterdir()) == ["large.input"]
        assert await store.request("large") == Request(
            b"x" * 100, "image/png", None, "classification=2"
        )
        (store.folder / "left-by-a-crash.input").write_bytes(b"?")
        (store.folder / ".large.result.tmp").write_bytes(b"half")
    async with JobStore(path, inline_bytes=8) as store:
        assert sorted(p.name for p in store.folder.iterdir()) == ["large.input"]
        await store.start("large", 1.0)
        await store.succeed("large", 2.0, "1", Result(b"y" * 50, "application/octet-stream", 10))
        assert await store.result("large") == Result(b"y" * 50, "application/octet-stream", 10)
        assert await store.delete(["large"]) == 1
        assert list(store.folder.iterdir()) == []


async def test_running_jobs_are_queued_again_at_start_until_max_attempts(tmp_path: Path) -> None:
    async with JobStore(tmp_path / "jobs.db") as store:
        for job_id in ("once", "often"):
            await store.add(queued(job_id), Request(b"{}", "application/json"))
        refused = await store.start("once", 1.0)
        assert refused is not None and refused.attempts == 1
        back = await store.requeue("once", "model 'tiny': queue full")  # refused: not a start
        assert back is not None and (back.state, back.attempts) == (State.QUEUED, 0)
        for _ in range(2):  # the server stops under "often" twice
            await store.start("often", 1.0)
            assert {j.id: j.state for j in await store.recover(3, 2.0)}["often"] is State.QUEUED
        await store.start("often", 1.0)
        await store.start("once", 1.0)
        moved = {job.id: job for job in await store.recover(max_attempts=3, now=5.0)}
        assert (moved["once"].state, moved["once"].attempts) == (State.QUEUED, 1)
        assert moved["often"].state is State.FAILED and moved["often"].finished_at == 5.0
        assert moved["often"].error == (
            "the server stopped 3 time(s) while the job was running ([jobs] max_attempts = 3)"
        )


async def test_the_jobs_may_share_the_token_databases_file(tmp_path: Path) -> None:
    path = tmp_path / "cinfer.db"
    async with Database(path) as tokens, JobStore(path) as jobs:
        await tokens.create(TokenSpec(name="t"))
        await jobs.add(queued("a"), Request(b"{}", "application/json"))
    async with Database(path) as tokens, JobStore(path) as jobs:
        assert [t.name for t in await tokens.tokens()] == ["t"]
        assert (await jobs.get("a")) is not None
