"""The connection to a Hutch server: one pooled HTTP client, keys and images."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar

import httpx

from hutch.sdk._async import images as _images
from hutch.sdk._config import ConnectionConfig
from hutch.sdk._http import (
    BUSY_RETRIES,
    busy_retry_after,
    connection_limits,
    current_async_scope,
    default_headers,
    error_from_response,
    error_from_text,
    json_or_none,
    stream_timeout,
    translate_transport_errors,
    unary_timeout,
)
from hutch.sdk._models import ApiKey, ImageDetail, ImageInfo, Team
from hutch.sdk._raw_http import AsyncRawPool, AsyncRawResponse, RawTarget
from hutch.sdk._requests import path_segment

QueryParams = Mapping[str, str] | tuple[tuple[str, str], ...]


class AsyncClient:
    """A connection to one Hutch server, with a pool of keep-alive HTTP connections.

    Sandboxes made without an explicit client share one client per server URL and API key
    (see :meth:`shared`). Make your own to control its lifetime::

        async with AsyncClient(base_url="http://hutch:7070", api_key="hk_...") as client:
            sb = await AsyncSandbox.create(client=client)

    Args:
        base_url: The server's URL; defaults to ``$HUTCH_URL``, then ``http://127.0.0.1:7070``.
        api_key: The API key; defaults to ``$HUTCH_API_KEY``.
        config: Settings resolved already; when given, ``base_url`` and ``api_key`` must not be.

    Raises:
        ConfigurationError: The URL is not an http(s) URL.
    """

    _shared: ClassVar[dict[ConnectionConfig, tuple[object, AsyncClient]]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        config: ConnectionConfig | None = None,
    ) -> None:
        if config is not None and (base_url is not None or api_key is not None):
            raise TypeError("pass either config or base_url/api_key, not both")
        self.config = config if config is not None else ConnectionConfig.load(base_url, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url,
            headers=default_headers(self.config),
            timeout=unary_timeout(self.config),
            limits=connection_limits(),
            follow_redirects=False,
        )
        # JSON requests with a streamed answer (exec, code runs) skip httpx's own layer
        # (sdk/_raw_http.py): their own pool, on the connection limits httpx's has.
        self._raw = RawTarget.for_config(self.config)
        self._raw_pool = AsyncRawPool(self._raw) if self._raw is not None else None

    @classmethod
    def shared(cls, base_url: str | None = None, api_key: str | None = None) -> AsyncClient:
        """The client shared by everything that talks to this server with this key.

        Args:
            base_url: As for the constructor.
            api_key: As for the constructor.
        """
        config = ConnectionConfig.load(base_url, api_key)
        scope = current_async_scope()
        # NB: a process-wide registry on purpose: sandboxes made one by one must reuse one
        # connection pool. An async client is bound to the event loop it was made on, so a
        # new loop (asyncio.run() again) gets a new client.
        with cls._shared_lock:
            entry = cls._shared.get(config)
            if entry is not None and entry[0] is scope and not entry[1].is_closed:
                return entry[1]
            client = cls(config=config)
            cls._shared[config] = (scope, client)
            return client

    @classmethod
    async def aclose_shared(cls) -> None:
        """Close the shared clients (those of the running event loop, for async clients)."""
        scope = current_async_scope()
        with cls._shared_lock:
            mine = [c for s, c in cls._shared.values() if s is scope]
            cls._shared = {k: v for k, v in cls._shared.items() if v[0] is not scope}
        for client in mine:
            await client.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._http.is_closed

    async def aclose(self) -> None:
        """Close the pooled connections. Sandboxes keep running on the server."""
        await self._http.aclose()
        if self._raw_pool is not None:
            await self._raw_pool.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.config.base_url!r})"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: QueryParams | None = None,
        content: Any = None,
    ) -> Any:
        """Send one request and return its decoded JSON body (``None`` for an empty body).

        Raises:
            APIError: The server answered with an error (the subclass for its ``code``).
            HutchConnectionError: The server could not be reached.
        """
        if self.is_closed:
            raise RuntimeError(f"{self!r} is closed")
        for attempt in range(BUSY_RETRIES + 1):
            with translate_transport_errors(self.config):
                response = await self._http.request(
                    method, path, json=json, params=params, content=content
                )
            wait = busy_retry_after(response)
            if wait is None or attempt == BUSY_RETRIES or content is not None:
                break
            # NB: the server made nothing (too many sandboxes were starting): safe to resend.
            await asyncio.sleep(wait)
        if response.is_error:
            raise error_from_response(response)
        return json_or_none(response)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        limit: float | None = None,
        params: QueryParams | None = None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Send one request whose answer is streamed; yields the body's chunks as they arrive.

        Args:
            method: The HTTP method.
            path: The path under the server's URL, e.g. ``"/v1/sandboxes/sb-1/exec/stream"``.
            json: The JSON body.
            limit: Seconds after which the server ends the stream by itself (a command's
                timeout); ``None`` waits for as long as the stream lasts.

        Raises:
            APIError: The server answered with an error (the subclass for its ``code``).
            HutchConnectionError: The server could not be reached, or the stream broke.
        """
        if self._raw is not None and self._raw_pool is not None and json is not None and not params:
            async with self._raw_stream(
                self._raw, self._raw_pool, method, path, json, limit
            ) as raw:
                yield raw
            return
        async with self.stream_response(
            method, path, json=json, limit=limit, params=params
        ) as response:
            yield self._chunks(response)

    @contextlib.asynccontextmanager
    async def _raw_stream(
        self,
        target: RawTarget,
        pool: AsyncRawPool,
        method: str,
        path: str,
        json: Any,
        limit: float | None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """:meth:`stream` of a JSON request, without httpx (sdk/_raw_http.py)."""
        if self.is_closed:
            raise RuntimeError(f"{self!r} is closed")
        timeout = stream_timeout(self.config, limit)
        with translate_transport_errors(self.config):
            response = await pool.open(target, method, path, json, timeout)
        try:
            if response.status >= 400:
                with translate_transport_errors(self.config):
                    content = await response.aread()
                raise error_from_text(response.status, content.decode("utf-8", "replace"))
            yield self._raw_chunks(response)
        finally:
            await response.aclose()

    async def _raw_chunks(self, response: AsyncRawResponse) -> AsyncIterator[bytes]:
        with translate_transport_errors(self.config):
            async for chunk in response.aiter_stream():
                yield chunk

    async def read_all(self, method: str, path: str, *, params: QueryParams | None = None) -> bytes:
        """The whole streamed body of one request, in one buffer.

        NB: joining the chunks would hold the file twice at the end (the chunks and the
        joined copy). The buffer is sized once from Content-Length, and BytesIO.getvalue()
        hands its own bytes object over without a copy: a 600 MB file costs ~600 MB.

        Raises:
            APIError: The server answered with an error (the subclass for its ``code``).
            HutchConnectionError: The server could not be reached, or the stream broke.
        """
        buffer = io.BytesIO()
        async with self.stream_response(method, path, params=params) as response:
            expected = response.headers.get("content-length", "")
            if expected.isdigit() and int(expected) > 0:
                buffer.seek(int(expected) - 1)
                buffer.write(b"\0")
                buffer.seek(0)
            async for chunk in self._chunks(response):
                buffer.write(chunk)
            buffer.truncate()  # a body shorter than announced keeps only what came
        return buffer.getvalue()

    @contextlib.asynccontextmanager
    async def stream_response(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        limit: float | None = None,
        params: QueryParams | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """The response of one request whose body is streamed, once it is known not to be
        an error (see :meth:`stream`)."""
        if self.is_closed:
            raise RuntimeError(f"{self!r} is closed")
        request = self._http.build_request(
            method, path, json=json, params=params, timeout=stream_timeout(self.config, limit)
        )
        with translate_transport_errors(self.config):
            response = await self._http.send(request, stream=True)
        try:
            if response.is_error:
                with translate_transport_errors(self.config):
                    await response.aread()
                raise error_from_response(response)
            yield response
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        with translate_transport_errors(self.config):
            async for chunk in response.aiter_bytes():
                yield chunk

    async def health(self) -> bool:
        """Whether the server answers ``GET /healthz`` (no API key needed).

        Raises:
            HutchConnectionError: The server could not be reached.
        """
        body = await self.request("GET", "/healthz")
        return isinstance(body, dict) and body.get("ok") is True

    async def list_keys(self) -> list[ApiKey]:
        """The server's API keys (their secrets are never shown again)."""
        body = await self.request("GET", "/v1/keys")
        return [ApiKey.from_json(k) for k in body["keys"]]

    async def create_key(
        self,
        name: str,
        *,
        e2b: bool = False,
        team: str | None = None,
        role: str | None = None,
        expires_in: float | str | None = None,
    ) -> ApiKey:
        """Create an API key (needs an admin key); the returned value's ``key`` is the only
        copy of the secret.

        Args:
            name: A name to recognise the key by, e.g. ``"ci"``.
            e2b: Shape the key as E2B's (``e2b_`` and 40 hex digits), which the e2b SDKs
                check before they send it.
            team: The team it acts for (default ``"default"``).
            role: ``"member"`` (its team's resources only; the default) or ``"admin"``.
            expires_in: It stops working this long from now: seconds or ``"30d"``.
        """
        body: dict[str, object] = {"name": name}
        if e2b:
            body["e2b"] = True
        for field, value in (("team", team), ("role", role), ("expires_in", expires_in)):
            if value is not None:
                body[field] = value
        return ApiKey.from_json(await self.request("POST", "/v1/keys", json=body))

    async def list_teams(self) -> list[Team]:
        """The server's teams and their quotas (needs an admin key)."""
        body = await self.request("GET", "/v1/teams")
        return [Team.from_json(t) for t in body["teams"]]

    async def create_team(self, name: str, **quota: float | str | None) -> Team:
        """Create a team (needs an admin key).

        Args:
            name: 1-63 of a-z, 0-9, ``-`` and ``_``.
            **quota: Limits, as :meth:`set_team_quota` takes them.
        """
        body: dict[str, object] = {"name": name}
        if quota:
            body["quota"] = quota
        return Team.from_json(await self.request("POST", "/v1/teams", json=body))

    async def set_team_quota(self, name: str, **quota: float | str | None) -> Team:
        """Set some of a team's limits (needs an admin key); ``None`` lifts one.

        Args:
            name: The team.
            **quota: ``max_running``, ``max_cpu``, ``max_memory_mb``, ``max_disk_mb``,
                ``max_lifetime`` (seconds or ``"2h"``), ``max_snapshots``,
                ``rate_per_second``, ``rate_burst``. A create over a limit raises
                :class:`QuotaExceeded`.
        """
        path = f"/v1/teams/{path_segment(name)}/quota"
        return Team.from_json(await self.request("PATCH", path, json=quota))

    async def delete_team(self, name: str) -> None:
        """Delete a team and its keys (needs an admin key; refused while it owns sandboxes)."""
        await self.request("DELETE", f"/v1/teams/{path_segment(name)}")

    async def delete_key(self, key_id: str) -> None:
        """Delete (revoke) an API key.

        Args:
            key_id: The key's ``id`` (``"key-..."``), not its secret.
        """
        await self.request("DELETE", f"/v1/keys/{path_segment(key_id)}")

    async def list_images(self) -> list[ImageInfo]:
        """The images in the server's store."""
        body = await self.request("GET", "/v1/images")
        return [ImageInfo.from_json(i) for i in body["images"]]

    async def pull_image(
        self,
        ref: str,
        *,
        name: str | None = None,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
    ) -> ImageDetail:
        """Pull an image from an OCI registry into the server's store.

        Args:
            ref: The reference, e.g. ``"127.0.0.1:5000/app:1"`` or ``"python:3.12-slim"``.
            name: The name to store it as (default: ``ref``, with ``:latest`` if untagged).
            username: Registry user (with ``password``).
            password: Registry password or token.
            insecure: Plain HTTP (or TLS without verification), for local registries.

        Raises:
            RegistryError: The registry refused (its message) or could not be reached.
            InvalidRequest: The image is corrupt or for another architecture.
        """
        return await _images.pull_image(
            self, ref, name=name, username=username, password=password, insecure=insecure
        )

    async def import_image(self, path: str, *, name: str | None = None) -> ImageDetail:
        """Upload a ``docker save`` tarball or an OCI archive; ``name`` defaults to its tag.

        Raises:
            InvalidRequest: The archive is corrupt, truncated or for another architecture
                (``image_invalid`` / ``image_architecture``); nothing was stored.
        """
        return await _images.import_image(self, path, name=name)

    async def build_image(
        self,
        name: str,
        context: str | os.PathLike[str] = ".",
        *,
        dockerfile: str | os.PathLike[str] | None = None,
        on_progress: Callable[[str], object] | None = None,
    ) -> ImageDetail:
        """Build a Dockerfile on the server (buildah) and store the image as ``name``.

        The ``context`` directory is sent as a tar; the server refuses links and special files
        in it (replace each link by the file it points to). ``FROM`` may name an image the
        server has (the build has no network: pull a registry image first), an earlier stage
        or ``scratch``.

        Args:
            name: The name to store the image as, e.g. ``"app:1"``.
            context: The build context directory.
            dockerfile: The Dockerfile (default: ``context/Dockerfile``); it may lie outside.
            on_progress: Called with each line of the build's output as it comes.

        Raises:
            ImageBuildFailed: A step failed; ``output_tail`` has its last lines.
            PayloadTooLarge: The context is over the server's limit.
            InvalidRequest: A bad name, a context that is not usable, or a Dockerfile that
                names a host path (``FROM oci:/...``), a URL to ``ADD`` or a ``RUN --mount``.
        """
        return await _images.build_image(
            self, name, context, dockerfile=dockerfile, on_progress=on_progress
        )

    async def get_image(self, name: str) -> ImageDetail:
        """An image with its config (env, working dir, user, entrypoint, cmd).

        Raises:
            ImageNotFound: No image has that name or id.
        """
        return await _images.get_image(self, name)

    async def tag_image(self, name: str, new_name: str) -> ImageDetail:
        """Give the image ``name`` another name ``new_name``."""
        return await _images.tag_image(self, name, new_name)

    async def remove_image(self, name: str) -> None:
        """Remove an image name (its content goes when no name is left).

        Raises:
            Conflict: Sandboxes run on it (``image_in_use``): destroy them first.
        """
        await _images.remove_image(self, name)
