"""Python engine: a model written in Python (``model.py``), run in worker processes.

``model.py`` defines one class with ``predict``: it is constructed once per instance with the
version's folder and its ``[parameters]``, then ``predict(inputs)`` gets a whole batch as a
dict of numpy arrays and returns a dict of numpy arrays; ``close()``, when defined, runs at
unload. model.toml declares ``[[inputs]]`` and ``[[outputs]]``; every answer is checked against
them (a missing output, a wrong datatype or shape is an error naming the output and model.py).

Each instance is its own process (pyworker.py, run by ``python = ...`` from model.toml or by the
server's interpreter), so model code never holds the server's GIL. Tensors cross through shared
memory segments; only a small JSON header goes over the socket. A worker that raises gets its
traceback into the server log and the exception's message and line to the client. A worker that
dies fails only the request it held, is restarted at once, and the version's reason says so
until it is back. ``timeout_s`` in model.toml (or ``[batching] timeout_us``) bounds a predict: a
worker that takes longer is killed and restarted.

Unpickling and importing run code: models come from the repository, which the operator
controls (docs/engines.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..datatypes import NUMPY
from ..errors import CinferError, ModelLoadError, Unavailable
from ..model_config import TensorSpec
from . import LoadOptions
from .pyworker import (
    CLOSE,
    PREDICT,
    Segment,
    Tensor,
    encode_bytes,
    pack,
    read_bytes,
    received_fds,
    unpack,
)

log = logging.getLogger("cinfer")

WORKER = Path(__file__).with_name("pyworker.py")
MAX_MESSAGE = 1 << 18
FDS_SPACE = socket.CMSG_SPACE(4 * 4)
CLOSE_WAIT_S = 5.0
STRING_KINDS = "OSU"


class PredictFailed(CinferError):
    """The model's own code raised: its message, the model and the line (HTTP 500)."""

    status_code = 500


class PredictRaised(PredictFailed):
    """predict raised an exception (the loader's warm-up on zeros tolerates this one)."""


class WorkerDied(CinferError):
    """The worker process exited (a crash, os._exit, a kill) while holding a request (HTTP
    500; logged here, once, with the exit status)."""

    status_code = 500


def exit_status(code: int | None) -> str:
    if code is None:
        return "is not answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Worker:
    """One worker process and its channel; used by one instance thread at a time."""

    def __init__(self, label: str, instance: int, python: str, load: dict[str, Any]) -> None:
        self.label, self.instance = label, instance
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [python, str(WORKER), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                cwd=load["folder"],
            )
        except OSError as exc:
            ours.close()
            raise ModelLoadError(f"python = {python!r}: cannot start it ({exc})") from exc
        finally:
            theirs.close()
        self.sock = ours
        self._inbox = bytearray(MAX_MESSAGE)
        self._timeout: float | None = None  # the socket's, as last set
        self.requests: Segment | None = None
        self.answers: Segment | None = None
        self.info: dict[str, Any] = {}
        try:
            self._send(json.dumps({"op": "load", **load}).encode())
            data, _ = self._receive(None)
            reply: dict[str, Any] = json.loads(bytes(data))
        except WorkerDied as exc:
            self.close()
            raise ModelLoadError(f"the worker {exc} before the model loaded") from exc
        if "error" in reply:
            self.close()
            _log_traceback(label, reply)
            raise ModelLoadError(_describe(reply, load["path"]))
        self.info = reply["ready"]

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], timeout: float | None
    ) -> dict[str, Any]:
        tensors: list[Tensor] = []
        blobs: list[bytes | np.ndarray] = []
        size = 0
        for name, array in inputs.items():
            if array.dtype.kind in STRING_KINDS:
                blob: bytes | np.ndarray = encode_bytes(array)
                nbytes = len(blob)
                tensors.append((name, "bytes", array.shape, size, nbytes))
            else:
                blob = np.ascontiguousarray(array)
                nbytes = blob.nbytes
                tensors.append((name, blob.dtype.str, array.shape, size, nbytes))
            blobs.append(blob)
            size += nbytes + (-nbytes % 64)
        fds = []
        grown = 0
        if self.requests is None or size > self.requests.size:
            if self.requests is not None:
                self.requests.close()
            self.requests = Segment.create(1 << max(16, (size - 1).bit_length()), "cinfer-requests")
            fds.append(self.requests.fd)
            grown = self.requests.size
        buffer = self.requests.map
        for (_, _, _, offset, nbytes), blob in zip(tensors, blobs):
            if isinstance(blob, bytes):
                buffer[offset : offset + nbytes] = blob
            elif nbytes:
                buffer[offset : offset + nbytes] = blob.data.cast("B")
        self._send(pack(PREDICT, grown, tensors, list(outputs)), fds)
        data, received = self._receive(timeout)
        if data[0] == ord("{"):
            error: dict[str, Any] = json.loads(bytes(data))
            return error
        _, grown, answered, _ = unpack(data)
        if received:
            if self.answers is not None:
                self.answers.close()
            self.answers = Segment(received[0], grown)
        answers = self.answers
        assert answers is not None, "an answer before any answer segment"
        result: dict[str, np.ndarray] = {}
        for name, dtype, shape, offset, nbytes in answered:
            if dtype == "bytes":
                result[name] = read_bytes(answers.map, offset, nbytes, shape)
            else:
                view = np.frombuffer(answers.map, dtype, nbytes // np.dtype(dtype).itemsize, offset)
                result[name] = view.reshape(shape).copy()  # the segment is reused
        return {"outputs": result}

    def _send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
        except OSError:
            raise WorkerDied(self._status()) from None

    def _receive(self, timeout: float | None) -> tuple[memoryview, list[int]]:
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout
        try:
            size, ancillary, _, _ = self.sock.recvmsg_into([self._inbox], FDS_SPACE)
        except TimeoutError:
            self.process.kill()
            self.process.wait()
            raise WorkerDied(f"was killed after {timeout:g} s without an answer") from None
        except OSError:
            size, ancillary = 0, []
        if not size:
            raise WorkerDied(self._status())
        return memoryview(self._inbox)[:size], received_fds(ancillary) if ancillary else []

    def _status(self) -> str:
        try:
            code = self.process.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return exit_status(code)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.alive:
            try:
                self.sock.send(pack(CLOSE, 0, []))
                self.process.wait(timeout=CLOSE_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.sock.close()
        for segment in (self.requests, self.answers):
            if segment is not None:
                segment.close()
        self.requests = self.answers = None


class PythonEngine:
    """Runs model.py in one worker process per instance."""

    default_file = "model.py"
    kind = "python"

    def __init__(self, options: LoadOptions) -> None:
        path = options.path
        self._label = f"{path.parent.parent.name}:{path.parent.name}"
        self._file = path.name
        if not options.declared_inputs or not options.declared_outputs:
            raise ModelLoadError(
                f"the {self.kind} engine needs [[inputs]] and [[outputs]] in model.toml: "
                f"{path.name} carries no tensor names or datatypes"
            )
        for spec in (*options.declared_inputs, *options.declared_outputs):
            if spec.datatype == "BF16":
                raise ModelLoadError(
                    f"tensor '{spec.name}': the {self.kind} engine takes no BF16 tensors "
                    "(numpy has no bfloat16)"
                )
        self.inputs = list(options.declared_inputs)
        self.outputs = list(options.declared_outputs)
        self._declared = {t.name: t for t in self.outputs}
        self.device = "cpu" if options.device == "auto" else options.device
        self.own_threads = True  # the instance thread only waits on its worker's socket
        self._python = options.python or sys.executable
        if options.python is not None and not os.access(options.python, os.X_OK):
            raise ModelLoadError(f"python = {options.python!r}: no executable file there")
        self._timeout = options.timeout_s
        self._load = self._load_message(options)
        self._workers: list[Worker | None] = []
        self._down: dict[int, str] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.on_reason: Callable[[str], None] | None = None
        """Set by the loader: reports (or clears, with "") why an instance is down."""
        self.tolerated_warm_up: type[Exception] = PredictRaised
        """A predict that raises on the loader's zeros does not fail the load."""
        try:
            self.resize(options.instances)
            first = self._workers[0]
            self._check(first.info if first is not None else {})
        except BaseException:
            self.close()
            raise

    def _load_message(self, options: LoadOptions) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(options.path),
            "folder": str(options.path.parent),
            "parameters": dict(options.parameters),
        }

    def _check(self, info: dict[str, Any]) -> None:
        """What the loaded model reported, against model.toml (the sklearn engine checks)."""

    def resize(self, instances: int) -> None:
        while len(self._workers) > instances:
            worker = self._workers.pop()
            if worker is not None:
                worker.close()
        while len(self._workers) < instances:
            index = len(self._workers)
            self._workers.append(Worker(self._label, index, self._python, self._load))

    def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        worker = self._workers[instance]
        if worker is None:
            worker = self._restart(instance)
        try:
            reply = worker.run(inputs, outputs, self._timeout)
        except WorkerDied as exc:
            message = f"model {self._label}: the worker of instance {instance} {exc}"
            log.error("%s while running a request; restarting it", message)
            self._workers[instance] = None
            worker.close()
            self._report(instance, f"{message}; restarting it")
            threading.Thread(target=self._restart_quietly, args=(instance,), daemon=True).start()
            raise WorkerDied(f"{message} while running this request") from None
        if "error" in reply:
            _log_traceback(self._label, reply)
            failed = PredictRaised if reply.get("during") == "predict" else PredictFailed
            raise failed(f"model {self._label}: {_describe(reply, self._file)}")
        result: dict[str, np.ndarray] = reply["outputs"]
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        for name in outputs:
            self._check_output(name, result[name], rows)
        return result

    def _check_output(self, name: str, array: np.ndarray, rows: int) -> None:
        spec = self._declared[name]
        if spec.datatype == "BYTES":
            ok = array.dtype.kind in STRING_KINDS
        else:
            ok = array.dtype == NUMPY[spec.datatype]
        where = f"model {self._label}: {self._file} returned output '{name}'"
        if not ok:
            raise PredictFailed(
                f"{where} as {array.dtype}; model.toml declares {spec.datatype}"
                f" ({NUMPY[spec.datatype]})"
            )
        shape, want = array.shape, _shape(spec, rows)
        if len(shape) != len(want) or any(w not in (-1, s) for w, s in zip(want, shape)):
            raise PredictFailed(
                f"{where} with shape {list(shape)}; model.toml declares {list(spec.shape)}"
                + (f" ({rows} rows in this batch)" if spec.shape and spec.shape[0] == -1 else "")
            )

    def _restart(self, instance: int) -> Worker:
        with self._lock:
            worker = self._workers[instance]
            if worker is not None:
                return worker
            if self._closed:
                raise Unavailable(f"model {self._label} is unloading")
            try:
                worker = Worker(self._label, instance, self._python, self._load)
            except ModelLoadError as exc:
                reason = f"model {self._label}: instance {instance} cannot restart: {exc}"
                self._report(instance, reason)
                raise Unavailable(reason) from None
            self._workers[instance] = worker
            self._report(instance, "")
            log.info("model %s: the worker of instance %d is back", self._label, instance)
            return worker

    def _restart_quietly(self, instance: int) -> None:
        with contextlib.suppress(CinferError):  # the reason says why; the next request retries
            self._restart(instance)

    def _report(self, instance: int, reason: str) -> None:
        if reason:
            self._down[instance] = reason
        else:
            self._down.pop(instance, None)
        if self.on_reason is not None:
            self.on_reason("; ".join(self._down[i] for i in sorted(self._down)))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, [None] * len(self._workers)
        for worker in workers:
            if worker is not None:
                worker.close()


def _shape(spec: TensorSpec, rows: int) -> tuple[int, ...]:
    """The declared full shape with the batch dim (if any) filled in."""
    if rows and spec.shape and spec.shape[0] == -1:
        return (rows, *spec.shape[1:])
    return spec.shape


def _describe(reply: dict[str, Any], file: str) -> str:
    where = reply.get("where")
    during = reply.get("during")
    if during == "predict":
        return f"predict raised {reply['error']}" + (f" ({where})" if where else f" ({file})")
    if during == "load":
        at = f" ({where})" if where else ""
        return f"{file} failed to load: {reply['error']}{at}"
    return f"{file}: {reply['error']}"


def _log_traceback(label: str, reply: dict[str, Any]) -> None:
    if reply.get("traceback"):
        log.error("model %s: %s\n%s", label, reply["error"], reply["traceback"].rstrip())
