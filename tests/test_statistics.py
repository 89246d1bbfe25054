"""Triton's statistics extension over a large repository: the all-models answer gives the
event loop back while it is built (issue 11, finding 12). Its shape and counts are in
test_metrics.py. Behaviour only, no elapsed-time thresholds (CI is 2 loaded cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import statistics
from tests.conftest import MANY, running_app, ticks_while

pytestmark = pytest.mark.anyio


async def test_statistics_of_all_models_give_the_loop_back(many_tiny: Path) -> None:
    async with running_app(many_tiny) as (client, dataplane):
        ticks, stats = await ticks_while(dataplane.model_statistics(None, None))
        # A loop turn for others after every CHUNK versions, and every version is there.
        assert ticks >= MANY // statistics.CHUNK
        assert [s["name"] for s in stats["model_stats"]] == [f"m{i:03d}" for i in range(MANY)]
        ticks, answer = await ticks_while(client.get("/v2/models/stats"))
        assert ticks >= MANY // statistics.CHUNK
        assert len(answer.json()["model_stats"]) == MANY


async def test_one_model_is_one_slice(many_tiny: Path) -> None:
    async with running_app(many_tiny) as (_, dataplane):
        ticks, stats = await ticks_while(dataplane.model_statistics("m123", None))
    assert ticks == 1
    assert [(s["name"], s["version"]) for s in stats["model_stats"]] == [("m123", "1")]
