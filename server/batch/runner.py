"""The pipeline of a run: read ahead, keep a window of pieces in flight, write in order.

    reader thread --chunks--> event loop --pieces--> target (DataPlane or a server)
                                  |  answers, put back in input order
                                  v
                             writer thread --records--> output (a checkpoint per write)

The event loop only moves pieces and futures: reading (parsing CSV, opening files) and
writing (encoding JSON, SQL) run in a thread each, so the loop keeps the engine fed. A
piece's answer is written only once every piece before it is answered, so the output holds
a prefix of the input at every moment; writes are grouped (`FLUSH_ROWS`, `FLUSH_S`), and at
most one is in flight.

`stop` (SIGINT, SIGTERM) ends the run cleanly: no new piece is sent, the ones in flight are
answered and written, and the summary says where a rerun resumes. A `TargetFailed` (the
model gone, the server unreachable after its retries) ends it the same way, at the piece
that failed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from .inputs import Source
from .outputs import Sink
from .progress import Progress, Summary
from .rows import Answer, BatchError, Piece, Schema, TargetFailed

FLUSH_ROWS = 4096
FLUSH_S = 0.5


class Target(Protocol):
    """Where pieces are answered: local.Local or remote.Remote."""

    schema: Schema

    def describe(self) -> str:
        """Where the rows go (the model, its version, instances or server)."""

    def window(self) -> tuple[int, int]:
        """(rows, requests) to keep in flight."""

    async def infer(self, piece: Piece) -> list[Answer]:
        """The piece's answers (several when its rows were answered one by one); raises
        TargetFailed when there is no answer to be had."""


class Run:
    """One `cinfer batch` run of `source` through `target` into `sink`."""

    def __init__(self, source: Source, target: Target, sink: Sink) -> None:
        self.source = source
        self.target = target
        self.sink = sink
        schema = target.schema
        self.stacked = schema.stacked if len(schema.inputs) == 1 else True
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cinfer-batch-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="cinfer-batch-read")

    async def open(self, keyed: bool) -> int:
        """Lock and open the output; the row this run starts at. A BatchError when the
        output holds rows that are not this input's."""
        loop = asyncio.get_running_loop()
        done, last = await loop.run_in_executor(
            self._writer, self.sink.open, self.target.schema, keyed
        )
        total = self.source.total
        if done > total:
            raise BatchError(
                f"{self.sink.name} holds {done:,} rows, the input only {total:,}: it is the "
                "output of another input (give another output)"
            )
        if keyed and done and self.source.key(done - 1) != last:
            raise BatchError(
                f"{self.sink.name}: its last row, {done - 1}, is {last!r}, but the folder's "
                f"file {done - 1} is now {self.source.key(done - 1)!r}: the folder changed "
                "since (give another output)"
            )
        return done

    async def run(self, start: int, stop: asyncio.Event, progress: Progress) -> Summary:
        loop = asyncio.get_running_loop()
        summary = Summary(self.source.total, start)
        began = time.monotonic()
        rows_window, requests_window = self.target.window()
        chunks = self.source.pieces(start)
        reading = loop.run_in_executor(self._reader, next, chunks, None)
        queued: collections.deque[Piece] = collections.deque()
        pending: collections.deque[tuple[Piece, asyncio.Task[list[Answer]] | None]]
        pending = collections.deque()
        flying = answered = errors = buffered = 0
        buffer: list[Answer] = []
        writing: asyncio.Future[None] | None = None
        flushed = time.monotonic()
        exhausted = False
        try:
            while True:
                while (
                    not (exhausted or stop.is_set())
                    and flying < rows_window
                    and len(pending) < requests_window
                ):
                    if not queued:
                        chunk = await reading
                        if chunk is None:
                            exhausted = True
                            break
                        queued.extend(chunk)
                        reading = loop.run_in_executor(self._reader, next, chunks, None)
                    piece = queued.popleft()
                    if piece.error is not None:
                        pending.append((piece, None))
                    else:
                        pending.append((piece, asyncio.create_task(self.target.infer(piece))))
                        flying += piece.count
                if not pending:
                    break
                head = pending[0][1]
                if head is not None and not head.done():
                    await asyncio.wait([head])
                while pending and (pending[0][1] is None or pending[0][1].done()):
                    piece, task = pending.popleft()
                    if task is None:
                        answers = [Answer(piece, None, piece.error)]
                    else:
                        flying -= piece.count
                        answers = task.result()  # TargetFailed ends the run here
                    buffer += answers
                    buffered += piece.count
                    answered += piece.count
                    errors += sum(a.piece.count for a in answers if a.outputs is None)
                progress.update(answered, errors)
                if buffer and (buffered >= FLUSH_ROWS or time.monotonic() - flushed >= FLUSH_S):
                    if writing is not None:
                        await writing
                    writing = loop.run_in_executor(self._writer, self._write, buffer, summary)
                    buffer, buffered, flushed = [], 0, time.monotonic()
        except TargetFailed as exc:
            summary.stopped = str(exc)
        finally:
            tasks = [task for _, task in pending if task is not None]
            for task in tasks:
                task.cancel()
            # Their answers come after the piece that stopped the run: not written, but
            # collected, so no failure of theirs is left unretrieved.
            await asyncio.gather(*tasks, return_exceptions=True)
            if writing is not None:
                await writing
            if buffer:
                await loop.run_in_executor(self._writer, self._write, buffer, summary)
            summary.seconds = time.monotonic() - began
            if summary.stopped is None and summary.resumed + summary.written < summary.total:
                summary.stopped = "interrupted"
        progress.update(answered, errors, force=True)
        return summary

    def _write(self, answers: list[Answer], summary: Summary) -> None:
        """Writer thread: the answers as output rows, one checkpoint."""
        summary.errors += self.sink.write(answers, self.stacked)
        summary.written += sum(answer.piece.count for answer in answers)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self.sink.close)
        finally:
            self.source.close()
            self._writer.shutdown()
            self._reader.shutdown(cancel_futures=True)
