"""The server under test: where it is, and what it says about itself and the model.

Plain blocking HTTP (http.client) for the few control requests: server metadata (`GET /v2`),
model metadata and configuration, and the statistics extension polled once per window. The
load itself goes through `connection.py`.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

TIMEOUT_S = 10.0
STAT_FIELDS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


class BenchError(Exception):
    """Stops the run with a message for the user (exit status 1)."""


@dataclass
class Endpoint:
    """The server's base URL and the headers every request carries (`-H`)."""

    host: str
    port: int
    prefix: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, headers: list[tuple[str, str]]) -> Endpoint:
        """`host:port`, `http://host:port` or `http://host:port/prefix` (perf_analyzer's -u)."""
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise BenchError(f"-u {url}: only http:// is supported (got {parts.scheme}://)")
        if not parts.hostname:
            raise BenchError(f"-u {url}: no host name")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise BenchError(f"-u {url}: {exc}") from None
        return cls(parts.hostname, port, parts.path.rstrip("/"), headers)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.prefix}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; BenchError when the server cannot be reached."""
        headers = dict(self.headers)
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
            try:
                self._conn.request(method, self.prefix + path, body, headers)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server had closed: once more
                if attempt == 2:
                    raise BenchError(
                        f"{method} {self.base}{path}: the server closed the connection "
                        "without answering"
                    ) from None
            except ConnectionRefusedError:
                self.close()
                raise BenchError(
                    f"cannot connect to {self.base}: connection refused; is a KServe v2 server "
                    "listening there? (set the URL with -u host:port)"
                ) from None
            except socket.gaierror as exc:
                self.close()
                raise BenchError(f"cannot resolve the host in {self.base}: {exc}") from None
            except TimeoutError:
                self.close()
                raise BenchError(
                    f"{method} {self.base}{path}: no answer within {TIMEOUT_S:g} s"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise BenchError(f"{method} {self.base}{path}: {exc}") from None
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> tuple[int, Any]:
        """(status, decoded JSON) of a GET; BenchError when a 200 body is not JSON.

        The body of an error that is not JSON comes back as it is (bytes).
        """
        status, body = self.request("GET", path)
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            if status != 200:
                return status, body
            raise BenchError(
                f"GET {self.base}{path} answered HTTP {status} with a body that is not JSON "
                f"({body[:60]!r}): is this a KServe v2 server? (-u)"
            ) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def error_message(body: bytes | Any) -> str:
    """The server's `{"error": ...}` message, or the start of the body."""
    if isinstance(body, bytes):
        try:
            body = json.loads(body)
        except ValueError:
            text = body[:200].decode("utf-8", "replace").strip()
            return text or "(empty body)"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return json.dumps(body)[:200]


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Model:
    """What the server says about one model version."""

    name: str
    version: str | None
    """The version asked for with -x (None: the server's choice)."""
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...]
    max_batch_size: int | None
    """From the model configuration; None when the server offers none (MLServer)."""

    @property
    def path(self) -> str:
        path = f"/v2/models/{quote(self.name, safe='')}"
        return path + (f"/versions/{quote(self.version, safe='')}" if self.version else "")


def server_extensions(endpoint: Endpoint) -> list[str]:
    """The extensions listed by `GET /v2`; BenchError when that is not v2 server metadata."""
    status, meta = endpoint.get_json("/v2")
    where = f"GET {endpoint.base}/v2"
    if status in (401, 403):
        raise BenchError(
            f"{where} answered HTTP {status} ({error_message(meta)}): pass credentials with "
            "-H 'Authorization: Bearer TOKEN'"
        )
    if status != 200:
        raise BenchError(
            f"{where} answered HTTP {status}: not a KServe v2 server, or the wrong URL (-u; a "
            "path prefix goes into the URL)"
        )
    if not isinstance(meta, dict) or not isinstance(meta.get("extensions", []), list):
        raise BenchError(
            f"{where} answered {json.dumps(meta)[:120]}, which is not v2 server metadata "
            '({"name", "version", "extensions": [...]}): is this a KServe v2 server? (-u)'
        )
    return [str(e) for e in meta.get("extensions", [])]


def describe_model(endpoint: Endpoint, name: str, version: str | None) -> Model:
    """Metadata and (when offered) configuration of the model; BenchError when unusable."""
    probe = Model(name, version, (), (), None)
    status, meta = endpoint.get_json(probe.path)
    what = f"model '{name}'" + (f" version {version}" if version else "")
    if status == 404:
        known = _model_names(endpoint)
        hint = f"; the server has: {', '.join(known)}" if known else ""
        raise BenchError(f"{what} not found on {endpoint.base} ({error_message(meta)}){hint}")
    if status != 200:
        raise BenchError(
            f"GET {endpoint.base}{probe.path} answered HTTP {status}: {error_message(meta)}"
        )
    try:
        inputs = tuple(
            Tensor(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
            for t in meta["inputs"]
        )
        outputs = tuple(str(t["name"]) for t in meta.get("outputs") or ())
    except (KeyError, TypeError, ValueError):
        raise BenchError(
            f"the metadata of {what} is not v2 model metadata (expected inputs with name, "
            f"datatype and shape): {json.dumps(meta)[:200]}"
        ) from None
    if not inputs:
        raise BenchError(f"the metadata of {what} lists no inputs; bench.py needs their shapes")
    max_batch_size = None
    status, config = endpoint.get_json(probe.path + "/config")
    if status == 200 and isinstance(config, dict):
        config = config.get("config", config)  # some servers wrap it
        if isinstance(config.get("max_batch_size", 0), int):
            max_batch_size = int(config.get("max_batch_size", 0))
    return Model(name, version, inputs, outputs, max_batch_size)


def _model_names(endpoint: Endpoint) -> list[str]:
    """Model names from the repository extension, when the server has it (best effort)."""
    try:
        status, body = endpoint.request("POST", "/v2/repository/index", b"{}")
        entries = json.loads(body) if status == 200 else []
        return sorted({str(e["name"]) for e in entries if isinstance(e, dict) and "name" in e})
    except (BenchError, ValueError, TypeError):
        return []


@dataclass(frozen=True)
class ServerStats:
    """Cumulative (count, ns) per statistic of Triton's `inference_stats`, all versions summed."""

    times: dict[str, tuple[int, int]]

    def __sub__(self, earlier: ServerStats) -> ServerStats:
        return ServerStats(
            {
                k: (c - earlier.times[k][0], ns - earlier.times[k][1])
                for k, (c, ns) in self.times.items()
            }
        )

    def __add__(self, other: ServerStats) -> ServerStats:
        return ServerStats(
            {
                k: (c + other.times[k][0], ns + other.times[k][1])
                for k, (c, ns) in self.times.items()
            }
        )

    def per_request_us(self, key: str) -> float:
        """Mean time of one request in `key` (its ns over its own count), in microseconds."""
        count, ns = self.times[key]
        return ns / count / 1000 if count > 0 else 0.0

    @classmethod
    def parse(cls, body: Any, model: Model) -> ServerStats:
        """From `{"model_stats": [...]}`; ValueError when it is not that shape."""
        if not isinstance(body, dict) or not isinstance(body.get("model_stats"), list):
            raise ValueError(f"expected {{'model_stats': [...]}}, got {json.dumps(body)[:120]}")
        totals = dict.fromkeys(STAT_FIELDS, (0, 0))
        for entry in body["model_stats"]:
            if entry.get("name") != model.name:
                continue
            if model.version and str(entry.get("version")) != model.version:
                continue
            stats = entry["inference_stats"]
            for key in STAT_FIELDS:
                count, ns = totals[key]
                totals[key] = (count + int(stats[key]["count"]), ns + int(stats[key]["ns"]))
        return cls(totals)


def read_stats(endpoint: Endpoint, model: Model) -> ServerStats:
    """The model's statistics now; BenchError when the server does not answer them."""
    status, body = endpoint.get_json(model.path + "/stats")
    if status != 200:
        raise BenchError(f"GET {endpoint.base}{model.path}/stats answered HTTP {status}")
    try:
        return ServerStats.parse(body, model)
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(
            f"GET {endpoint.base}{model.path}/stats is not Triton's statistics format: {exc}"
        ) from None
