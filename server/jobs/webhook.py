"""Callbacks: a finished job POSTed to the URL its submitter named, signed, with retries.

Only to the hosts ``[jobs] callback_hosts`` lists (empty: none), checked when the job is
submitted, so a client cannot make the server send requests to arbitrary addresses (its own
loopback, a cloud metadata service): a URL naming another host is a 400 naming that host.
Redirects are not followed, and proxy variables of the environment are not used.

The body is the job as ``GET /v2/jobs/{id}`` shows it when it finished, and
``Cinfer-Signature: sha256=<hex>`` is the HMAC-SHA256 of exactly those bytes under
``[jobs] callback_secret``. A delivery counts when the receiver answers 2xx; otherwise it is
tried again after `callback_backoff_s`, doubled each time, up to `callback_attempts`
deliveries. Each outcome is written to the job (its ``callback`` field), so a delivery cut off
by a restart resumes at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
import orjson

from .. import __version__
from ..errors import InvalidRequest, show
from ..settings import JobsSettings
from .job import Job

log = logging.getLogger("cinfer")

MAX_URL = 2048
CONCURRENT = 16
"""Deliveries in flight at once; the others wait their turn."""

Record = Callable[[str, str, int, str | None], Awaitable[Job | None]]
"""Writes a delivery's outcome: (job id, status, deliveries so far, error)."""


def signature(secret: bytes, body: bytes) -> str:
    """The ``Cinfer-Signature`` header's value for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Callbacks:
    """Checks callback URLs at submission and delivers them when their jobs finish."""

    def __init__(self, settings: JobsSettings, record: Record) -> None:
        self.hosts = settings.callback_hosts
        self.secret = settings.callback_secret.get_secret_value().encode()
        self.attempts = settings.callback_attempts
        self.backoff = settings.callback_backoff_s
        self.timeout = settings.callback_timeout_s
        self._record = record
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(CONCURRENT)

    def check(self, url: str) -> str:
        """`url` if a job may call it back, else a 400 saying why."""
        if len(url) > MAX_URL:
            raise InvalidRequest(f"callback URL of {len(url)} characters (at most {MAX_URL})")
        if not self.hosts:
            raise InvalidRequest(
                "callbacks are off on this server ([jobs] callback_hosts is empty): submit "
                "without Callback-URL, and watch or poll the job instead"
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidRequest(f"callback URL {show(url)} cannot be read: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"callback URL {show(url)} is not an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise InvalidRequest("a callback URL may not carry credentials (user:password@)")
        host = parts.hostname.lower()
        effective = port if port is not None else 443 if parts.scheme == "https" else 80
        if not any(_matches(entry, host, effective) for entry in self.hosts):
            named = f"{host}:{port}" if port is not None else host
            raise InvalidRequest(
                f"callback host {show(named)} is not allowed ([jobs] callback_hosts: "
                f"{', '.join(self.hosts)})"
            )
        return url

    def deliver(self, job: Job) -> None:
        """Call `job` back, in the background (it has finished and has a callback URL)."""
        task = asyncio.get_running_loop().create_task(self._deliver(job))
        self._tasks.add(task)  # a hard reference: the loop keeps only a weak one
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cut deliveries off (their jobs stay pending: the next start resumes them)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver(self, job: Job) -> None:
        assert job.callback_url is not None
        body = orjson.dumps(job.answer())
        headers = {
            "content-type": "application/json",
            "user-agent": f"cinfer/{__version__}",
            "cinfer-job": job.id,
            "cinfer-signature": signature(self.secret, body),
        }
        done = job.callback_attempts
        while done < self.attempts:
            if done:
                await asyncio.sleep(self.backoff * 2 ** (done - 1))
            async with self._slots:
                error = await self._post(job.callback_url, body, headers)
            done += 1
            if error is None:
                await self._record(job.id, "delivered", done, None)
                return
            status = "failed" if done >= self.attempts else "pending"
            log.info("job %s: callback delivery %d failed: %s", job.id, done, error)
            await self._record(job.id, status, done, error)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """One delivery: None when the receiver took it, else what went wrong."""
        if self._client is None:
            # trust_env=False: an HTTP_PROXY of the environment must not route around the
            # allow-list (nor see the callbacks).
            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False
            )
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code} from {urlsplit(url).netloc}"


def _matches(entry: str, host: str, port: int) -> bool:
    """Whether a ``[jobs] callback_hosts`` entry allows `host` (lower case) and `port`."""
    name, wanted = entry, None
    if entry.startswith("["):  # [IPv6] or [IPv6]:port
        name, _, rest = entry[1:].partition("]")
        if rest.startswith(":"):
            wanted = int(rest[1:])
    elif entry.count(":") == 1:
        name, _, number = entry.partition(":")
        wanted = int(number)
    if wanted is not None and wanted != port:
        return False
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name
