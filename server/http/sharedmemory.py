"""Triton's shared-memory extensions over REST: system shared memory (register, unregister,
status; the regions themselves are sharedmemory.py's, shared with the other doors), and the
CUDA shared-memory routes, which this server answers with "not supported" (its tensors live
in host memory; a client with a GPU sends them through system shared memory or the body).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from .. import wire
from ..errors import InvalidRequest
from ..sharedmemory import Regions
from .endpoints import JSONResponse, read_json
from .routes import Access, Route

SYSTEM = "/v2/systemsharedmemory"
CUDA = "/v2/cudasharedmemory"


class SharedMemory:
    def __init__(self, regions: Regions, limit: int) -> None:
        self.regions = regions
        self.limit = limit

    async def status(self, request: Request) -> Response:
        return JSONResponse(self.regions.status(request.path_params.get("region")))

    async def register(self, request: Request) -> Response:
        body = await read_json(request, wire.SharedMemoryRegister, self.limit)
        name = request.path_params["region"]
        await asyncio.to_thread(self.regions.register, name, body.key, body.offset,
                                body.byte_size)  # fmt: skip
        return JSONResponse({})

    async def unregister(self, request: Request) -> Response:
        self.regions.unregister(request.path_params.get("region"))
        return JSONResponse({})

    async def cuda_status(self, request: Request) -> Response:
        return JSONResponse([])  # nothing is, or can be, registered

    async def cuda_register(self, request: Request) -> Response:
        await read_json(request, wire.CUDASharedMemoryRegister, self.limit)
        raise InvalidRequest(
            f"CUDA shared memory region '{request.path_params['region']}': CUDA shared memory "
            "is not supported by this server (its tensors are in host memory): register a "
            "system shared memory region (/v2/systemsharedmemory) or send the tensor"
        )

    async def cuda_unregister(self, request: Request) -> Response:
        return JSONResponse({})

    def routes(self) -> list[Route]:
        one = "/region/{region}"
        need = Access.SHARED_MEMORY
        return [
            Route("GET", f"{SYSTEM}/status", self.status, need,
                  "Every registered system shared memory region", tag="shared memory",
                  answer=list[dict[str, object]]),
            Route("GET", f"{SYSTEM}{one}/status", self.status, need,
                  "One system shared memory region", tag="shared memory",
                  answer=list[dict[str, object]], errors=(404,)),
            Route("POST", f"{SYSTEM}{one}/register", self.register, need,
                  "Register byte_size bytes at offset of the segment key as the region",
                  tag="shared memory", body=wire.SharedMemoryRegister, errors=(400,)),
            Route("POST", f"{SYSTEM}{one}/unregister", self.unregister, need,
                  "Unregister the region", tag="shared memory"),
            Route("POST", f"{SYSTEM}/unregister", self.unregister, need,
                  "Unregister every region", tag="shared memory"),
            Route("GET", f"{CUDA}/status", self.cuda_status, need,
                  "CUDA shared memory regions: none (not supported)", tag="shared memory",
                  answer=list[dict[str, object]]),
            Route("GET", f"{CUDA}{one}/status", self.cuda_status, need,
                  "CUDA shared memory regions: none (not supported)", tag="shared memory",
                  answer=list[dict[str, object]]),
            Route("POST", f"{CUDA}{one}/register", self.cuda_register, need,
                  "Not supported: answers 400", tag="shared memory", errors=(400,)),
            Route("POST", f"{CUDA}{one}/unregister", self.cuda_unregister, need,
                  "Nothing to unregister", tag="shared memory"),
            Route("POST", f"{CUDA}/unregister", self.cuda_unregister, need,
                  "Nothing to unregister", tag="shared memory"),
        ]  # fmt: skip
