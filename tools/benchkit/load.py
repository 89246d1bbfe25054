"""The load generators, each in its own process, and the pool that drives them.

A worker runs one event loop (uvloop when installed) and one of two loops at a time:
- concurrency: N connections, each sending its next request from the response callback of
  the previous one (closed loop; no task or future per request);
- request rate: requests are due at fixed intervals and go out on an idle connection when
  they are due, whatever the responses do (open loop). One that cannot go out on time (timer
  late, or every connection busy) is counted as delayed: then the client, not the server, set
  the pace.
The parent asks every worker for a `Sample` at each window boundary; a worker measures its own
interval and CPU time, so the samples merge without a shared clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from array import array
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from time import perf_counter_ns
from typing import Any

from .connection import HTTPConnection
from .target import error_message

LATE_NS = 2_000_000
"""A request sent more than this after its due time is delayed (timers tick in ms)."""
MAX_CONNECTIONS = 256
"""Connections per worker in request-rate mode (requests beyond them wait: delayed)."""
DRAIN_S = 30.0
STALE_NS = 2_000_000_000
"""Idle connections older than this are not reused (servers time idle ones out: uvicorn 5 s)."""


@dataclass
class Sample:
    """What one worker saw since its previous sample."""

    duration_ns: int
    latencies_ns: array[int]
    """One int64 per successful request (array, not numpy: workers start faster without it)."""
    send_ns: int = 0
    recv_ns: int = 0
    errors: dict[str, list[Any]] = field(default_factory=dict)
    """'HTTP 400' / 'connection' -> [count, first message]."""
    cpu_s: float = 0.0
    sent: int = 0
    sent_bytes: int = 0
    """Body bytes of the requests sent."""
    delayed: int = 0


class Worker:
    """The load loop of one process, driven by commands on a pipe."""

    def __init__(
        self, pipe: Connection, address: tuple[str, int], requests: list[bytes], sizes: list[int]
    ) -> None:
        self.pipe = pipe
        self.address = address
        self.requests = requests
        self.sizes = sizes
        """The body size of each request, for the bytes on the wire."""
        self.next_request = 0
        self.running = False
        self.idle: deque[HTTPConnection] = deque()
        self.connections: set[HTTPConnection] = set()
        self.backlog = 0
        self.tasks: set[asyncio.Future[None]] = set()
        self.mode = "concurrency"
        self.done: asyncio.Event | None = None
        self._reset()

    def _reset(self) -> None:
        self.latencies: array[int] = array("q")
        self.send_ns = self.recv_ns = self.sent = self.sent_bytes = self.delayed = 0
        self.errors: dict[str, list[Any]] = {}
        self.window_start = perf_counter_ns()
        self.cpu_start = time.process_time()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        loop.add_reader(self.pipe.fileno(), lambda: commands.put_nowait(self.pipe.recv()))
        # uvloop's add_reader makes the pipe non-blocking: a sample larger than the pipe's
        # buffer (a long window at a high rate) then failed to send with BlockingIOError.
        os.set_blocking(self.pipe.fileno(), True)
        self.pipe.send(("ready",))
        level: asyncio.Task[None] | None = None
        while True:
            command = await commands.get()
            if command[0] == "start":
                self.running = True
                self._reset()
                if command[1] == "concurrency":
                    level = asyncio.create_task(self._concurrency(int(command[2])))
                elif command[2] > 0:
                    level = asyncio.create_task(self._rate(float(command[2])))
                self.pipe.send(("started",))
            elif command[0] == "sample":
                if level is not None and level.done() and not level.cancelled():
                    failure = level.exception()
                    if failure is not None:
                        self.pipe.send(("failed", "".join(traceback.format_exception(failure))))
                        continue
                self.pipe.send(("sample", self.sample()))
            elif command[0] == "stop":
                self.running = False
                if level is not None:
                    level.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await level
                await self._drain()
                # What was sent and answered since the last sample: the server saw it too.
                self.pipe.send(("stopped", self.sample()))
            elif command[0] == "exit":
                for conn in list(self.connections):
                    conn.close()
                return

    def sample(self) -> Sample:
        now = perf_counter_ns()
        sample = Sample(
            duration_ns=now - self.window_start,
            latencies_ns=self.latencies,
            send_ns=self.send_ns,
            recv_ns=self.recv_ns,
            errors=self.errors,
            cpu_s=time.process_time() - self.cpu_start,
            sent=self.sent,
            sent_bytes=self.sent_bytes,
            delayed=self.delayed,
        )
        self._reset()
        self.window_start = now
        return sample

    # -- connections ----------------------------------------------------------------------

    async def _connect(self) -> HTTPConnection | None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: HTTPConnection(self._on_response, self._on_failure), *self.address
            )
        except OSError as exc:
            self._error("connection", f"cannot connect to {self.address}: {exc}")
            await asyncio.sleep(0.1)  # the server is gone: do not spin
            return None
        self.connections.add(conn)
        return conn

    def _send(self, conn: HTTPConnection) -> None:
        index = self.next_request
        self.next_request = (index + 1) % len(self.requests)
        self.sent += 1
        self.sent_bytes += self.sizes[index]
        conn.send(self.requests[index])

    def _on_response(self, conn: HTTPConnection, status: int, body: bytes) -> None:
        if 200 <= status < 300:
            self.latencies.append(conn.done_at - conn.sent_at)
            self.send_ns += conn.send_ns
            self.recv_ns += conn.done_at - conn.first_byte_at
        else:
            self._error(f"HTTP {status}", error_message(body))
        self._next(conn)

    def _on_failure(self, conn: HTTPConnection, reason: str) -> None:
        self._error("connection", reason)
        self._next(conn)

    def _error(self, key: str, message: str) -> None:
        entry = self.errors.get(key)
        if entry is None:
            self.errors[key] = [1, message]
        else:
            entry[0] += 1

    def _next(self, conn: HTTPConnection) -> None:
        """A connection became free: send again (concurrency, backlog) or park it."""
        if conn.closed:
            self.connections.discard(conn)
            if self.running and (self.mode == "concurrency" or self.backlog):
                self._spawn(self._replace())
        elif self.running and (self.mode == "concurrency" or self.backlog):
            if self.mode == "rate":
                self.backlog -= 1
            self._send(conn)
        else:
            self.idle.append(conn)
        if self.done is not None and not any(c.busy for c in self.connections):
            self.done.set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _replace(self) -> None:
        conn = await self._connect()
        if conn is None:
            if self.running:
                self._spawn(self._replace())
            return
        self._next(conn)

    def _pop_idle(self) -> HTTPConnection | None:
        """The most recently used idle connection that is safe to reuse, or None.

        Last in, first out, so the connections in use stay warm and the rest age out. One idle
        longer than STALE_NS is closed instead: the server may be closing it at this very
        moment (uvicorn's keep-alive timeout is 5 s), and a request written into that race
        would fail through no fault of the server's.
        """
        now = perf_counter_ns()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.done_at < STALE_NS:
                return conn
            conn.close()
            self.connections.discard(conn)
        return None

    async def _take(self) -> HTTPConnection | None:
        return self._pop_idle() or await self._connect()

    # -- the two load loops ---------------------------------------------------------------

    async def _concurrency(self, count: int) -> None:
        self.mode = "concurrency"
        for _ in range(count):
            conn = await self._take()
            if conn is None:
                self._spawn(self._replace())
            elif self.running:
                self._send(conn)

    async def _rate(self, rate: float) -> None:
        self.mode = "rate"
        self.backlog = 0
        interval = 1e9 / rate
        start = perf_counter_ns()
        due = 0  # index of the next request
        while self.running:
            now = perf_counter_ns()
            while start + due * interval <= now:
                late = now - (start + due * interval) > LATE_NS
                due += 1
                conn = self._pop_idle()
                if conn is not None:
                    self.delayed += late
                    self._send(conn)
                elif len(self.connections) < MAX_CONNECTIONS:
                    self.delayed += late
                    self.backlog += 1
                    self._spawn(self._replace())
                else:
                    self.delayed += 1  # every connection busy: it waits for one
                    self.backlog += 1
            wait = start + due * interval - perf_counter_ns()
            await asyncio.sleep(max(wait, 0) / 1e9)

    async def _drain(self) -> None:
        """Wait for the requests in flight, so the next level starts clean."""
        self.backlog = 0
        if any(c.busy for c in self.connections):
            self.done = asyncio.Event()
            try:
                await asyncio.wait_for(self.done.wait(), DRAIN_S)
            except TimeoutError:
                for conn in [c for c in self.connections if c.busy]:
                    conn.close()
            self.done = None
        self.idle = deque(c for c in self.connections if not c.closed and not c.busy)


def worker_main(
    pipe: Connection, address: tuple[str, int], requests: list[bytes], sizes: list[int]
) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    worker = Worker(pipe, address, requests, sizes)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(worker.serve())


class WorkerPool:
    """`count` load processes; a level's concurrency or rate is split between them."""

    def __init__(
        self,
        count: int,
        address: Any,
        requests: list[bytes],
        extra: Any,
        main: Callable[..., None] | None = None,
    ) -> None:
        """`main(pipe, address, requests, extra)` runs in each process: worker_main (HTTP,
        `extra` the body sizes) unless given (grpc_load.grpc_worker_main, the metadata)."""
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=main or worker_main, args=(child, address, requests, extra), daemon=True
            )
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)
        self._expect("ready")

    def _expect(self, what: str) -> list[Any]:
        replies = []
        for pipe, process in zip(self.pipes, self.processes):
            try:
                reply = pipe.recv()
                while reply[0] not in (what, "failed"):  # a reply left by an interrupted call
                    reply = pipe.recv()
            except EOFError:
                raise RuntimeError(
                    f"load worker {process.pid} exited with {process.exitcode}"
                ) from None
            if reply[0] == "failed":
                raise RuntimeError(f"load worker {process.pid} failed:\n{reply[1]}")
            replies.append(reply[1] if len(reply) > 1 else None)
        return replies

    def start(self, mode: str, level: float) -> None:
        n = len(self.pipes)
        for i, pipe in enumerate(self.pipes):
            if mode == "concurrency":
                share: float = int(level) // n + (i < int(level) % n)
            else:
                share = level / n
            pipe.send(("start", mode, share))
        self._expect("started")

    def sample(self) -> list[Sample]:
        for pipe in self.pipes:
            pipe.send(("sample",))
        return self._expect("sample")

    def stop(self) -> list[Sample]:
        """Stop the level; each worker's sample of what it did after the last one."""
        for pipe in self.pipes:
            pipe.send(("stop",))
        return self._expect("stopped")

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit",))
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
                process.join()


async def _probe(
    address: tuple[str, int], requests: Sequence[bytes], check: Callable[[int, int, bytes], None]
) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[int, bytes]] | None = None

    def on_response(conn: HTTPConnection, status: int, body: bytes) -> None:
        assert answer is not None
        answer.set_result((status, body))

    def on_failure(conn: HTTPConnection, reason: str) -> None:
        assert answer is not None
        answer.set_exception(ConnectionError(reason))

    conn: HTTPConnection | None = None
    peer: tuple[str, int] = address
    try:
        for index, request in enumerate(requests):
            if conn is None or conn.closed:  # the first, or the server closed the last one
                transport, conn = await loop.create_connection(
                    lambda: HTTPConnection(on_response, on_failure), *address
                )
                name = transport.get_extra_info("peername")
                peer = (str(name[0]), int(name[1]))
                conn.keep_body = True
            answer = loop.create_future()
            conn.send(request)
            status, body = await asyncio.wait_for(answer, 30)
            check(index, status, body)
        return peer
    finally:
        if conn is not None:
            conn.close()


def probe(
    address: tuple[str, int], requests: Sequence[bytes], check: Callable[[int, int, bytes], None]
) -> tuple[str, int]:
    """Send each request once, in turn, on the load path's own kind of connection, and pass
    each answer to `check(index, status, body)` (which raises to stop); the peer address.

    The peer address (host name resolved once) is what the workers connect to.
    """
    return asyncio.run(_probe(address, requests, check))
