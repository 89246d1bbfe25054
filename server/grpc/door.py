"""The gRPC door: HTTP/2 on the HTTP server's event loop, over the same DataPlane.

    http2.py Connection ([grpc] port) -> calls.py Endpoint
        inference.GRPCInferenceService  service.py -> codec.py -> DataPlane.exchange
        grpc.health.v1.Health           health.py

The servicers are grpc.aio servicers registered through the generated stubs; what carries
their calls is the server's own HTTP/2 (http2.py says why: grpc.aio's per-call cost). The
HTTP app starts the door in its lifespan start-up, once the DataPlane is started, and stops
it in its shutdown before the models are unloaded: the health service says NOT_SERVING, every
connection gets a GOAWAY (no new calls) and those in flight get [server] shutdown_grace_s to
finish. Messages are limited to [server] max_request_bytes, as REST bodies are (a larger one
is RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import logging

from ..auth.admission import Admission
from ..dataplane import DataPlane
from ..errors import ConfigError
from .calls import Endpoint
from .generated import grpc_service_pb2_grpc, health_pb2_grpc
from .health import HealthService
from .http2 import Connection
from .service import InferenceService

log = logging.getLogger("cinfer")

CLOSE_WAIT_S = 2.0
"""At shutdown, how long clients get to close their connections once answered."""


def address(host: str, port: int) -> str:
    """host:port as gRPC writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcDoor:
    def __init__(
        self,
        dataplane: DataPlane,
        admission: Admission | None,
        host: str,
        port: int,
        max_request_bytes: int,
        grace_s: float,
    ) -> None:
        self.dataplane = dataplane
        self.admission = admission
        self.host = host
        self.port = port
        """The port asked for; the one bound once started (when asked for 0 in tests)."""
        self.grace_s = grace_s
        self.health = HealthService(dataplane)
        self.endpoint = Endpoint(max_request_bytes)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(dataplane, admission), self.endpoint
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.endpoint)
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    def _connection(self) -> Connection:
        connection = Connection(self.endpoint, self.connections.discard)
        self.connections.add(connection)
        return connection

    async def start(self) -> None:
        """Listen and serve; a ConfigError when the port cannot be bound."""
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._connection, self.host or None, self.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for gRPC on {address(self.host, self.port)}: the port is taken "
                f"or the address is not this machine's ({exc.strerror}; [grpc] port, "
                "[server] host)"
            ) from exc
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        log.info("gRPC (KServe v2) on %s", address(self.host, self.port))

    async def stop(self) -> None:
        """NOT_SERVING, refuse new calls, give those in flight the grace period."""
        self.health.stop()
        server, self._server = self._server, None
        if server is None:
            return
        loop = asyncio.get_running_loop()
        server.close()
        for connection in list(self.connections):
            connection.go_away()
        deadline = loop.time() + self.grace_s
        calls = set(self.endpoint.calls)
        if calls:
            _, late = await asyncio.wait(calls, timeout=self.grace_s)
            for call in late:
                call.cancel()
            if late:
                await asyncio.wait(late)
        # Each client closes its connection once it has read its answers (http2.py _finish)
        waited = 0.0
        while self.connections and waited < max(min(CLOSE_WAIT_S, deadline - loop.time()), 0):
            await asyncio.sleep(0.01)
            waited += 0.01
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        await server.wait_closed()
