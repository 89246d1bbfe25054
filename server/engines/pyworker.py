"""The worker process of the python and sklearn engines, one per instance (engines/python.py).

Run as a script by whatever interpreter the model names (`python = ...` in model.toml), so it
imports only the standard library and numpy, never the server's package. It talks to the server
over one AF_UNIX SOCK_SEQPACKET socket (its file descriptor is argv[1]): each message is one JSON
header; tensors travel in two memfd segments passed with SCM_RIGHTS, one the server writes
requests into and one this process writes answers into. A segment is replaced by a larger one
when a tensor does not fit, so steady traffic maps nothing and pickles nothing.

Messages (server -> worker): {"op": "load", ...config} once, then {"op": "predict", "inputs":
[TENSOR...], "outputs": [names]} and {"op": "close"}. Worker -> server: {"ready": info} or
{"error": ...} after the load, then {"outputs": [TENSOR...]} or {"error": ...} per predict.
TENSOR is [name, dtype, shape, offset, nbytes]; dtype "bytes" is a BYTES tensor stored as
4-byte little-endian lengths, each followed by its bytes (the KServe binary layout).
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
import socket
import struct
import sys
import threading
import time
import traceback
import types
from array import array as int_array
from math import prod
from typing import Any

try:
    import numpy as np
except ImportError as missing:  # reported to the server once the socket is there
    NUMPY_MISSING: ImportError | None = missing
else:
    NUMPY_MISSING = None

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_MESSAGE = 1 << 18
FDS_SPACE = socket.CMSG_SPACE(4 * 4)
INBOX = bytearray(MAX_MESSAGE)  # one buffer for every message: no allocation per request
LENGTH = struct.Struct("<I")

# The messages of every request and answer are binary, not JSON (it was a third of a small
# request's cost on each side): a tag, the new segment's size (0: the same segment), the
# tensors as (name, dtype, shape, offset, nbytes), and for a request the outputs asked for.
PREDICT, ANSWER, CLOSE = b"P", b"A", b"C"
HEAD = struct.Struct("<cQH")
SHORT = struct.Struct("<H")
PLACE = struct.Struct("<QQ")
Tensor = tuple[str, str, tuple[int, ...], int, int]


def pack(tag: bytes, size: int, tensors: list[Tensor], names: list[str] | tuple[()] = ()) -> bytes:
    parts = [HEAD.pack(tag, size, len(tensors))]
    for name, dtype, shape, offset, nbytes in tensors:
        n, d = name.encode(), dtype.encode()
        parts.append(
            struct.pack(
                f"<H{len(n)}sB{len(d)}sB{len(shape)}qQQ",
                len(n),
                n,
                len(d),
                d,
                len(shape),
                *shape,
                offset,
                nbytes,
            )
        )
    parts.append(SHORT.pack(len(names)))
    for name in names:
        n = name.encode()
        parts.append(SHORT.pack(len(n)) + n)
    return b"".join(parts)


def unpack(data: bytes | bytearray | memoryview) -> tuple[bytes, int, list[Tensor], list[str]]:
    tag, size, count = HEAD.unpack_from(data, 0)
    at = HEAD.size
    tensors: list[Tensor] = []
    for _ in range(count):
        (n,) = SHORT.unpack_from(data, at)
        name = bytes(data[at + 2 : at + 2 + n]).decode()
        at += 2 + n
        d = data[at]
        dtype = bytes(data[at + 1 : at + 1 + d]).decode()
        ndim = data[at + 1 + d]
        at += 2 + d
        shape = struct.unpack_from(f"<{ndim}q", data, at)
        at += 8 * ndim
        offset, nbytes = PLACE.unpack_from(data, at)
        at += PLACE.size
        tensors.append((name, dtype, shape, offset, nbytes))
    (count,) = SHORT.unpack_from(data, at)
    at += 2
    names = []
    for _ in range(count):
        (n,) = SHORT.unpack_from(data, at)
        names.append(bytes(data[at + 2 : at + 2 + n]).decode())
        at += 2 + n
    return tag, size, tensors, names


def send(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[memoryview, list[int]]:
    size, ancillary, _, _ = sock.recvmsg_into([INBOX], FDS_SPACE)
    if not size:
        sys.exit(0)  # the server closed its end: it is gone or shutting down
    return memoryview(INBOX)[:size], received_fds(ancillary) if ancillary else []


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(int_array("i", data[: len(data) - len(data) % 4]))
    return fds


class Segment:
    """A shared memory segment: a memfd and its mapping."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.map = mmap.mmap(fd, size)

    @classmethod
    def create(cls, size: int, name: str = "cinfer-answers") -> Segment:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def where(exc: BaseException) -> str:
    """ "model.py, line 12" for the innermost frame of the model's own files, or ""."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if os.path.abspath(frame.filename).startswith(FOLDER + os.sep):
            return f"{os.path.relpath(frame.filename, FOLDER)}, line {frame.lineno}"
    return ""


def model_frames(exc: BaseException) -> types.TracebackType | None:
    """The traceback from the first frame outside this file (the model's code, or below)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb or exc.__traceback__


def failure(exc: BaseException, during: str) -> dict[str, Any]:
    message = f"{type(exc).__name__}: {exc}"
    return {
        "error": message[:4000],
        "during": during,
        "where": where(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, model_frames(exc)))[
            -16000:
        ],
    }


FOLDER = ""


def load_python(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import importlib.util

    path = config["path"]
    spec = importlib.util.spec_from_file_location("cinfer_model", path)
    if spec is None or spec.loader is None:
        raise LoadRefused(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cinfer_model"] = module
    spec.loader.exec_module(module)
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and value.__module__ == "cinfer_model"
        and callable(getattr(value, "predict", None))
    ]
    name = os.path.basename(path)
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise LoadRefused(
            f"{name} must define exactly one class with a predict method (found: {found})"
        )
    model = classes[0](pathlib.Path(FOLDER), config["parameters"])
    return model, {"class": classes[0].__name__}


class LoadRefused(Exception):
    """A load that failed for a reason the message says in full (no traceback needed)."""


class Estimator:
    """A scikit-learn estimator behind the python model interface: one method per output."""

    def __init__(self, estimator: Any, config: dict[str, Any]) -> None:
        self.estimator = estimator
        self.input = config["inputs"][0]
        self.outputs = config["outputs"]  # name -> [method, dtype]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs[self.input]
        answers = {}
        for name, (method, dtype, shape) in self.outputs.items():
            result = np.asarray(getattr(self.estimator, method)(x))
            want = [len(x) if d == -1 and i == 0 else d for i, d in enumerate(shape)]
            if -1 not in want and result.shape != tuple(want) and result.size == prod(want):
                result = result.reshape(want)
            if dtype == "bytes":
                result = result.astype(object)
                flat = [v if isinstance(v, bytes) else str(v).encode() for v in result.ravel()]
                result = np.array(flat, dtype=object).reshape(result.shape)
            else:
                try:
                    result = result.astype(dtype, casting="same_kind")
                except TypeError as exc:
                    raise TypeError(
                        f"{method} gave {result.dtype} values, which do not cast to {dtype}"
                    ) from exc
            answers[name] = result
        return answers


def load_sklearn(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    path = config["path"]
    name = os.path.basename(path)
    if path.endswith(".joblib"):
        import joblib

        estimator = joblib.load(path)
    else:
        import pickle

        with open(path, "rb") as f:
            estimator = pickle.load(f)
    missing = [
        f"{out} ({method})"
        for out, (method, _, _) in config["outputs"].items()
        if not callable(getattr(estimator, method, None))
    ]
    if missing:
        raise LoadRefused(
            f"{name}: the {type(estimator).__name__} in it has no method for output "
            + ", ".join(missing)
        )
    info: dict[str, Any] = {"class": type(estimator).__name__}
    features = getattr(estimator, "n_features_in_", None)
    if features is not None:
        info["n_features_in"] = int(features)
    return Estimator(estimator, config), info


def read_inputs(segment: Segment, tensors: list[Tensor]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, dtype, shape, offset, nbytes in tensors:
        if dtype == "bytes":
            arrays[name] = read_bytes(segment.map, offset, nbytes, shape)
        else:
            count = nbytes // np.dtype(dtype).itemsize
            view = np.frombuffer(segment.map, dtype, count, offset)
            arrays[name] = view.reshape(shape)
    return arrays


def read_bytes(buffer: mmap.mmap, offset: int, nbytes: int, shape: tuple[int, ...]) -> np.ndarray:
    items, end = [], offset + nbytes
    while offset < end:
        (length,) = LENGTH.unpack_from(buffer, offset)
        offset += 4
        items.append(bytes(buffer[offset : offset + length]))
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.ravel():
        value = item if isinstance(item, bytes) else str(item).encode()
        parts.append(LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


class Answers:
    """The answer segment, grown (replaced by a larger memfd) when the outputs do not fit."""

    def __init__(self) -> None:
        self.segment = Segment.create(1 << 16)
        self.unsent: int | None = self.segment.fd  # the server has not mapped it yet

    def write(self, outputs: list[tuple[str, np.ndarray]]) -> tuple[list[Tensor], int | None]:
        """The tensors' places, and the new segment's fd when it had to grow."""
        tensors: list[Tensor] = []
        blobs: list[bytes | np.ndarray] = []
        size = 0
        for name, array in outputs:
            if array.dtype.kind in "OSU":
                blob = encode_bytes(array)
                nbytes = len(blob)
                tensors.append((name, "bytes", array.shape, size, nbytes))
                blobs.append(blob)
            else:
                array = np.ascontiguousarray(array)
                nbytes = array.nbytes
                tensors.append((name, array.dtype.str, array.shape, size, nbytes))
                blobs.append(array)
            size += nbytes + (-nbytes % 64)
        grown, self.unsent = self.unsent, None
        if size > self.segment.size:
            self.segment.close()
            self.segment = Segment.create(1 << max(16, (size - 1).bit_length()))
            grown = self.segment.fd
        buffer = self.segment.map
        for (_, _, _, offset, nbytes), data in zip(tensors, blobs):
            if isinstance(data, bytes):
                buffer[offset : offset + nbytes] = data
            elif nbytes:
                buffer[offset : offset + nbytes] = data.data.cast("B")
        return tensors, grown


def answer(
    model: Any, names: list[str], inputs: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray]]:
    result = model.predict(inputs)
    if not isinstance(result, dict):
        raise LoadRefused(
            f"predict returned {type(result).__name__}; it must return a dict of output "
            "name -> numpy array"
        )
    outputs = []
    for name in names:
        if name not in result:
            raise LoadRefused(
                f"predict returned no output '{name}' (it returned: "
                f"{', '.join(map(str, result)) or 'nothing'})"
            )
        value = result[name]
        if not isinstance(value, np.ndarray):
            raise LoadRefused(
                f"output '{name}': predict returned {type(value).__name__}, not a numpy array"
            )
        outputs.append((name, value))
    return outputs


def serve(sock: socket.socket) -> None:
    global FOLDER
    data, _ = receive(sock)
    config = json.loads(bytes(data))
    FOLDER = os.path.abspath(config["folder"])
    sys.path.insert(0, FOLDER)  # model.py may import modules beside it
    try:
        model, info = (load_sklearn if config["kind"] == "sklearn" else load_python)(config)
    except LoadRefused as exc:
        send(sock, {"error": str(exc), "during": "load", "where": "", "traceback": ""})
        return
    except BaseException as exc:
        send(sock, failure(exc, "load"))
        return
    send(sock, {"ready": info})
    requests: Segment | None = None
    answers = Answers()
    while True:
        data, fds = receive(sock)
        tag, size, inputs, names = unpack(data)
        if fds:
            if requests is not None:
                requests.close()
            requests = Segment(fds[0], size)
        if tag == CLOSE:
            break
        try:
            assert requests is not None, "a predict before any request segment"
            outputs = answer(model, names, read_inputs(requests, inputs))
            tensors, grown = answers.write(outputs)
        except LoadRefused as exc:
            send(sock, {"error": str(exc), "during": "answer", "where": "", "traceback": ""})
            continue
        except Exception as exc:
            send(sock, failure(exc, "predict"))
            continue
        if grown is None:
            sock.send(pack(ANSWER, 0, tensors))
        else:
            socket.send_fds(sock, [pack(ANSWER, answers.segment.size, tensors)], [grown])
    close = getattr(model, "close", None)
    if callable(close):
        close()


def orphaned_exit(parent: int) -> None:
    """Exit when the server is gone, even while predict runs (a busy or hung model never
    reads the socket's end-of-file). Not PR_SET_PDEATHSIG: that fires when the server thread
    that started this process ends, and threads that start workers come and go."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(70)


if __name__ == "__main__":
    # Running a script puts its own folder first on sys.path: this one would shadow the real
    # onnxruntime, openvino and torch packages with the engine modules beside it.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    threading.Thread(target=orphaned_exit, args=(os.getppid(),), daemon=True).start()
    channel = socket.socket(fileno=int(sys.argv[1]))
    if NUMPY_MISSING is not None:
        send(channel, {"error": f"{NUMPY_MISSING} (the worker needs numpy)", "during": "start"})
        sys.exit(1)
    serve(channel)
