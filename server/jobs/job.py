"""A job: one infer request submitted now, run in the background, collected later (issue 15).

Its states, and the moves between them (store.py makes each move one conditional UPDATE, so
of two racing moves, a cancel and a finish, exactly one wins):

    queued ──► running ──► succeeded | failed
      │  ▲        │
      │  └────────┤        running ► queued: the model was unavailable for a moment, or the
      │           │        server stopped under the job (found at the next start): it runs
      ▼           ▼        again, and `attempts` counts each start
    canceled   canceled

A job keeps the request as its door received it (`Request`: the body and what the door needs
to decode it again) and the answer as that door encoded it (`Result`), so the result is
the very response the infer URL would have sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from .. import wire


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINISHED = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED})
UNFINISHED = frozenset({State.QUEUED, State.RUNNING})


@dataclass(frozen=True, slots=True)
class Request:
    """A submitted infer request, as its door received it (the body already inflated)."""

    body: bytes
    content_type: str
    header_length: int | None = None
    """The binary tensor extension's Inference-Header-Content-Length, when it was sent."""
    query: str = ""
    """The infer URL's own query parameters (``classification=3`` for a form)."""


@dataclass(frozen=True, slots=True)
class Result:
    """A job's answer, as its door encoded it."""

    body: bytes
    content_type: str
    header_length: int | None = None
    """Inference-Header-Content-Length of a binary answer."""


@dataclass(frozen=True, slots=True)
class Job:
    """One job as the database holds it."""

    id: str
    seq: int
    """Its place in the submission order (never reused): the listing's cursor."""
    owner: str | None
    """The submitting API token's id; None with authentication off."""
    model: str
    version: str | None
    state: State
    attempts: int
    revision: int
    """Incremented by every move: an observer that has seen revision N skips older news."""
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    model_version: str | None
    callback_url: str | None
    callback_status: str | None
    callback_attempts: int
    callback_error: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def answer(self, prefix: str = "") -> wire.JobAnswer:
        """The job as the API shows it; links start with `prefix` (a proxy's root path)."""
        here = f"{prefix}/v2/jobs/{self.id}"
        callback: wire.JobCallback | None = None
        if self.callback_url is not None:
            status = cast(wire.CallbackStatus, self.callback_status or "pending")
            callback = {
                "url": self.callback_url,
                "status": status,
                "attempts": self.callback_attempts,
                "error": self.callback_error,
            }
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "model_version": self.model_version,
            "state": self.state.value,
            "attempts": self.attempts,
            "created_at": moment(self.created_at) or "",
            "started_at": moment(self.started_at),
            "finished_at": moment(self.finished_at),
            "error": self.error,
            "owner": self.owner,
            "callback": callback,
            "links": {"self": here, "result": f"{here}/result", "events": f"{here}/events"},
        }


def moment(timestamp: float | None) -> str | None:
    """``2026-12-03T17:45:49.123Z``: UTC, to the millisecond; None for None."""
    if timestamp is None:
        return None
    try:
        m = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}."
        f"{m.microsecond // 1000:03d}Z"
    )
