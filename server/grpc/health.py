"""grpc.health.v1.Health: the standard probe (Kubernetes ``grpc:`` probes, grpc_health_probe).

SERVING once the start-up load has finished (as /v2/health/ready), NOT_SERVING before it and
from the moment shutdown begins, so a probe takes the pod out of its Service while the calls
in flight drain. The service names "" (the server) and "inference.GRPCInferenceService"; any
other is NOT_FOUND, as the protocol asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ..dataplane import DataPlane
from .calls import CallContext as Context
from .generated import health_pb2 as pb

SERVICES = ("", "inference.GRPCInferenceService")
Status = pb.HealthCheckResponse.ServingStatus


class HealthService:
    """The servicer of health.proto."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.stopping = False
        self._changed = asyncio.Event()

    def status(self) -> Any:
        if self.dataplane.ready and not self.stopping:
            return pb.HealthCheckResponse.SERVING
        return pb.HealthCheckResponse.NOT_SERVING

    def stop(self) -> None:
        """Shutdown began: NOT_SERVING from now on, told to every watcher."""
        self.stopping = True
        self._changed.set()

    async def Check(self, request: pb.HealthCheckRequest, context: Context) -> Any:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return pb.HealthCheckResponse(status=self.status())

    async def Watch(
        self, request: pb.HealthCheckRequest, context: Context
    ) -> AsyncIterator[pb.HealthCheckResponse]:
        """The status now, then each change (start-up load done, shutdown begun)."""
        if request.service not in SERVICES:
            yield pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVICE_UNKNOWN)
            return
        sent = self.status()
        yield pb.HealthCheckResponse(status=sent)
        while not self.stopping:
            if self.dataplane.ready:
                await self._changed.wait()
            else:  # loading: the load finishing or shutdown, whichever comes first
                waits = [asyncio.ensure_future(self.dataplane.wait_ready()),
                         asyncio.ensure_future(self._changed.wait())]  # fmt: skip
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
            now = self.status()
            if now != sent:
                sent = now
                yield pb.HealthCheckResponse(status=now)
