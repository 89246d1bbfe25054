"""The gRPC door: a grpc.aio server on the HTTP server's event loop, over the same DataPlane.

    grpc.aio server ([grpc] port)
        inference.GRPCInferenceService  service.py -> codec.py -> DataPlane.exchange
        grpc.health.v1.Health           health.py

The HTTP app starts it in its lifespan start-up, once the DataPlane is started, and stops it
in its shutdown before the models are unloaded: the health service says NOT_SERVING, new calls
are refused and those in flight get [server] shutdown_grace_s to finish. Messages are limited
to [server] max_request_bytes, as REST bodies are (a larger one is RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import logging

import grpc

from ..auth.admission import Admission
from ..dataplane import DataPlane
from ..errors import ConfigError
from .generated import grpc_service_pb2_grpc, health_pb2_grpc
from .health import HealthService
from .service import InferenceService

log = logging.getLogger("cinfer")


def address(host: str, port: int) -> str:
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
        self.limit = max_request_bytes
        self.grace_s = grace_s
        self.health = HealthService(dataplane)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Listen and serve; a ConfigError when the port cannot be bound."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a shared one
            ]
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.dataplane, self.admission), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        where = address(self.host, self.port)
        try:
            bound = server.add_insecure_port(where)
        except RuntimeError:  # grpc logs the system's reason itself
            bound = 0
        if not bound:
            raise ConfigError(
                f"cannot listen for gRPC on {where}: the port is taken or the address is not "
                "this machine's ([grpc] port, [server] host)"
            )
        self.port = bound
        await server.start()
        self._server = server
        log.info("gRPC (KServe v2) on %s", address(self.host, bound))

    async def stop(self) -> None:
        """NOT_SERVING, refuse new calls, give those in flight the grace period."""
        self.health.stop()
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self.grace_s)
