"""inference.GRPCInferenceService over the DataPlane: the KServe v2 RPCs and Triton's extensions.

Each RPC is a thin wrapper, as the REST endpoints are: check the caller's token against what
the call needs (the same `Need` the matching REST route declares, through the same
Admission), call the DataPlane, answer in protobuf; a `CinferError` becomes its status code
(status.py). ModelInfer goes through `DataPlane.exchange` with this door's codec, so gRPC and
REST requests queue for the same instance pools and batch together.

System shared memory is the DataPlane's registry (sharedmemory.py), as over REST; CUDA shared
memory is "not supported" (INVALID_ARGUMENT, as REST's 400). Not served: trace and log
settings: UNIMPLEMENTED, saying so.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf import json_format

from ..auth.admission import Admission, bearer
from ..auth.grant import Grant, Need
from ..dataplane import DataPlane
from ..errors import CinferError, InvalidRequest, NotFound, Unauthorized
from . import codec
from .calls import CallContext as Context
from .generated import grpc_service_pb2 as pb
from .generated import model_config_pb2 as config_pb
from .status import abort

log = logging.getLogger("cinfer")


def peer_address(peer: str) -> str:
    """The client's IP address from a gRPC peer (``ipv4:127.0.0.1:5000``,
    ``ipv6:[::1]:5000``); empty for other transports."""
    peer = unquote(peer)
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


class InferenceService:
    """The servicer (every RPC of grpc_service.proto); `admission` is None when
    authentication is off."""

    def __init__(self, dataplane: DataPlane, admission: Admission | None) -> None:
        self.dataplane = dataplane
        self.admission = admission
        self.public_metadata = admission is not None and admission.guard.public_metadata

    # -- access ---------------------------------------------------------------------------

    async def _grant(self, context: Context, need: Need) -> tuple[Grant, float, float, str]:
        """The caller's grant for `need` (its arrival time, clock and address); the refusal
        (a CinferError, counted and logged) otherwise."""
        admission = self.admission
        assert admission is not None
        start = time.perf_counter()
        now = admission.guard.clock()
        address = peer_address(context.peer())
        try:
            credentials = self._credentials(context)
        except CinferError as exc:
            admission.refused(now, address, exc)
            raise
        grant = await admission.admit(credentials, need, address, now, start)
        return grant, start, now, address

    async def _admit(self, context: Context, need: Need) -> tuple[Grant, float, float, str]:
        """`_grant`, or the call ends with the refusal's status."""
        try:
            return await self._grant(context, need)
        except CinferError as exc:
            await abort(context, exc, need.target)
            raise  # abort raises; for the type checker

    @staticmethod
    def _credentials(context: Context) -> str | None:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                if authorization is not None:
                    raise Unauthorized("more than one authorization metadata entry")
                authorization = value
        return bearer(authorization)

    async def _serve(
        self, context: Context, need: Need | None, what: str, work: Callable[[Any], Any]
    ) -> Any:
        """Admit the call (when `need` asks for a token), answer `work(allowed)` (a value or
        an awaitable; `allowed`: the models the token may see, None for all), and log the
        outcome in the usage log as REST logs its routes'."""
        admission = self.admission
        if admission is None or need is None:
            try:
                answer = work(None)
                return await answer if inspect.isawaitable(answer) else answer
            except Exception as exc:
                await abort(context, exc, what)
        grant, start, now, address = await self._admit(context, need)
        allowed = grant.allows_model if grant.patterns else None
        status = 499
        try:
            answer = work(allowed)
            answer = await answer if inspect.isawaitable(answer) else answer
            status = 200
            return answer
        except CinferError as exc:
            status = exc.status_code
            await abort(context, exc, what)
        except Exception as exc:
            status = 500
            await abort(context, exc, what)
        finally:
            admission.done(grant, need, status, start, now, address)

    def _meta(self, need: Need) -> Need | None:
        """`need`, or None where ``[auth] public_metadata`` opens metadata to everyone."""
        return None if self.public_metadata else need

    # -- health and metadata --------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        target = f"ModelReady {request.name}"
        version = request.version or None

        def work(allowed: Any) -> Any:
            try:
                ready = self.dataplane.model_ready(request.name, version)
            except NotFound:  # as Triton answers: not ready, rather than an error
                ready = False
            return pb.ModelReadyResponse(ready=ready)

        need = self._meta(Need(("read", "infer"), target, request.name, version))
        return await self._serve(context, need, target, work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        def work(allowed: Any) -> Any:
            answer = self.dataplane.server_metadata()
            return pb.ServerMetadataResponse(
                name=answer["name"], version=answer["version"], extensions=answer["extensions"]
            )

        need = self._meta(Need(("read",), "ServerMetadata"))
        return await self._serve(context, need, "ServerMetadata", work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        target = f"ModelMetadata {request.name}"
        version = request.version or None

        def work(allowed: Any) -> Any:
            answer = self.dataplane.model_metadata(request.name, version)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=answer["name"],
                versions=answer["versions"],
                platform=answer["platform"],
                inputs=[tensor(**t) for t in answer["inputs"]],
                outputs=[tensor(**t) for t in answer["outputs"]],
            )

        need = self._meta(Need(("read",), target, request.name, version))
        return await self._serve(context, need, target, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> Any:
        target = f"ModelConfig {request.name}"
        version = request.version or None

        def work(allowed: Any) -> Any:
            answer = self.dataplane.model_config(request.name, version)
            config = json_format.ParseDict(
                answer, config_pb.ModelConfig(), ignore_unknown_fields=True
            )
            return pb.ModelConfigResponse(config=config)

        need = self._meta(Need(("read",), target, request.name, version))
        return await self._serve(context, need, target, work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        name = request.name or None
        version = request.version or None
        target = f"ModelStatistics {request.name}".rstrip()

        async def work(allowed: Any) -> Any:
            if name is None and version is not None:
                raise InvalidRequest("ModelStatistics: a version needs a model name")
            answer = await self.dataplane.model_statistics(name, version, allowed=allowed)
            return json_format.ParseDict(
                answer, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
            )

        need = Need(("read",), target) if name is None else Need(("read",), target, name, version)
        return await self._serve(context, self._meta(need), target, work)

    # -- repository -----------------------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        async def work(allowed: Any) -> Any:
            entries = await self.dataplane.repository_index(request.ready)
            index = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(
                models=[index(**e) for e in entries if allowed is None or allowed(e["name"])]
            )

        need = Need(("admin",), "RepositoryIndex")
        return await self._serve(context, need, "RepositoryIndex", work)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        target = f"RepositoryModelLoad {request.model_name}"

        async def work(allowed: Any) -> Any:
            params = {k: codec.parameter(v) for k, v in request.parameters.items()}
            await self.dataplane.load_model(request.model_name, params or None)
            return pb.RepositoryModelLoadResponse()

        need = Need(("admin",), target, request.model_name)
        return await self._serve(context, need, target, work)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        target = f"RepositoryModelUnload {request.model_name}"

        async def work(allowed: Any) -> Any:
            await self.dataplane.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        need = Need(("admin",), target, request.model_name)
        return await self._serve(context, need, target, work)

    # -- inference ------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        try:
            return await self._infer(request, context, "ModelInfer")
        except Exception as exc:
            await abort(context, exc, f"ModelInfer {request.model_name}")

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One answer per request, in order; a request that fails is answered with its
        error_message and the stream goes on (as Triton's does)."""
        async for request in request_iterator:
            try:
                answer = await self._infer(request, context, "ModelStreamInfer")
            except CinferError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)
                continue
            except Exception as exc:
                log.error("unhandled error on gRPC ModelStreamInfer", exc_info=exc)
                yield pb.ModelStreamInferResponse(
                    error_message="internal server error (see the server log)"
                )
                continue
            yield pb.ModelStreamInferResponse(infer_response=answer)

    async def _infer(self, request: pb.ModelInferRequest, context: Context, rpc: str) -> Any:
        """One inference through the DataPlane, admitted and logged in the usage log when
        tokens are on; raises what refused or failed it (each RPC answers that its way)."""
        model = request.model_name
        version = request.model_version or None
        regions = self.dataplane.regions

        def decode() -> Any:
            return codec.decode(request, regions)

        admission = self.admission
        if admission is None:
            return await self.dataplane.exchange(model, version, decode, codec.encode)
        need = Need(("infer",), f"{rpc} {model}", model, version, infer=True)
        grant, start, now, address = await self._grant(context, need)
        status = 499  # until answered: a call cancelled meanwhile is the client's going
        try:
            answer = await self.dataplane.exchange(model, version, decode, codec.encode)
            status = 200
            return answer
        except CinferError as exc:
            status = exc.status_code
            raise
        except Exception:
            status = 500
            raise
        finally:
            admission.done(grant, need, status, start, now, address)

    # -- not served -----------------------------------------------------------------------

    async def _unsupported(self, context: Context, what: str) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server"
        )

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> Any:
        def work(allowed: Any) -> Any:
            status = pb.SystemSharedMemoryStatusResponse
            found = self.dataplane.regions.status(request.name or None)
            return status(regions={r["name"]: status.RegionStatus(**r) for r in found})

        need = Need(("infer",), "SystemSharedMemoryStatus")
        return await self._serve(context, need, "SystemSharedMemoryStatus", work)

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> Any:
        async def work(allowed: Any) -> Any:
            await asyncio.to_thread(self.dataplane.regions.register, request.name, request.key,
                                    request.offset, request.byte_size)  # fmt: skip
            return pb.SystemSharedMemoryRegisterResponse()

        target = f"SystemSharedMemoryRegister {request.name}"
        return await self._serve(context, Need(("infer",), target), target, work)

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> Any:
        def work(allowed: Any) -> Any:
            self.dataplane.regions.unregister(request.name or None)
            return pb.SystemSharedMemoryUnregisterResponse()

        target = f"SystemSharedMemoryUnregister {request.name}".rstrip()
        return await self._serve(context, Need(("infer",), target), target, work)

    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        return pb.CudaSharedMemoryStatusResponse()  # none is, or can be, registered

    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        def work(allowed: Any) -> Any:
            raise InvalidRequest(
                f"CUDA shared memory region '{request.name}': CUDA shared memory is not "
                "supported by this server (its tensors are in host memory): register a system "
                "shared memory region or send the tensor"
            )

        target = f"CudaSharedMemoryRegister {request.name}"
        return await self._serve(context, Need(("infer",), target), target, work)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        return pb.CudaSharedMemoryUnregisterResponse()

    async def TraceSetting(self, request: Any, context: Context) -> Any:
        await self._unsupported(context, "trace settings")

    async def LogSettings(self, request: Any, context: Context) -> Any:
        await self._unsupported(context, "log settings")
