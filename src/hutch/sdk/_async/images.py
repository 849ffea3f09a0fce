"""Images on the server: pull, import, inspect, tag, remove (``/v1/images``)."""

from __future__ import annotations

import json
import os
import secrets
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from hutch.sdk._config import ConnectionConfig
from hutch.sdk._exceptions import HutchConnectionError, ImageBuildFailed, api_error
from hutch.sdk._http import (
    error_from_response,
    json_or_none,
    stream_timeout,
    translate_transport_errors,
)
from hutch.sdk._models import ImageDetail
from hutch.sdk._requests import path_segment


class ImageClient(Protocol):
    """What these calls need of an `AsyncClient` (which calls them: typed here, not imported)."""

    config: ConnectionConfig
    _http: httpx.AsyncClient

    async def request(
        self, method: str, path: str, *, json: Any = None, params: Any = None, content: Any = None
    ) -> Any: ...


_CHUNK = 1 << 20


def _image_path(name: str) -> str:
    # Names hold '/' and ':' (registry/repo:tag): keep '/' as it is, the route takes a path.
    return "/v1/images/" + "/".join(path_segment(p) for p in name.split("/"))


async def pull_image(
    client: ImageClient,
    ref: str,
    *,
    name: str | None = None,
    username: str | None = None,
    password: str | None = None,
    insecure: bool = False,
) -> ImageDetail:
    request = {
        "ref": ref,
        "name": name,
        "username": username,
        "password": password,
        "insecure": insecure,
    }
    with translate_transport_errors(client.config):
        response = await client._http.request(
            "POST", "/v1/images/pull", json=request, timeout=stream_timeout(client.config)
        )
    if response.is_error:
        raise error_from_response(response)
    body: Any = json_or_none(response)
    return ImageDetail.from_json(body)


async def _file_chunks(path: str) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:  # noqa: ASYNC230 - local file, chunk-sized reads
        while chunk := f.read(_CHUNK):
            yield chunk


async def import_image(
    client: ImageClient, path: str | os.PathLike[str], *, name: str | None = None
) -> ImageDetail:
    params = {"name": name} if name is not None else None
    with translate_transport_errors(client.config):
        response = await client._http.request(
            "POST",
            "/v1/images/import",
            content=_file_chunks(os.fspath(path)),
            params=params,
            headers={"content-type": "application/x-tar"},
            timeout=stream_timeout(client.config),
        )
    if response.is_error:
        raise error_from_response(response)
    body: Any = json_or_none(response)
    return ImageDetail.from_json(body)


async def get_image(client: ImageClient, name: str) -> ImageDetail:
    return ImageDetail.from_json(await client.request("GET", _image_path(name)))


async def tag_image(client: ImageClient, name: str, new_name: str) -> ImageDetail:
    body = await client.request("POST", _image_path(name) + "/tags", json={"name": new_name})
    return ImageDetail.from_json(body)


async def remove_image(client: ImageClient, name: str) -> None:
    await client.request("DELETE", _image_path(name))


def _context_tar(context: Path, dockerfile: Path | None, out: IO[bytes]) -> str:
    """Write `context` as a tar to `out` (symlinks as symlinks, never followed); returns the
    Dockerfile's path in it, adding the Dockerfile under a new name if it lies outside."""
    if not context.is_dir():
        raise FileNotFoundError(f"build context {context} is not a directory")
    dockerfile = dockerfile if dockerfile is not None else context / "Dockerfile"
    with tarfile.open(fileobj=out, mode="w") as tar:
        for entry in sorted(os.listdir(context)):
            tar.add(context / entry, arcname=entry)
        try:
            inside = dockerfile.resolve().relative_to(context.resolve())
        except ValueError:
            name = f".hutch-dockerfile-{secrets.token_hex(6)}"
            tar.add(dockerfile, arcname=name)
            return name
    return inside.as_posix()


async def build_image(
    client: ImageClient,
    name: str,
    context: str | os.PathLike[str],
    *,
    dockerfile: str | os.PathLike[str] | None,
    on_progress: Callable[[str], object] | None,
) -> ImageDetail:
    with tempfile.TemporaryFile() as archive:
        in_tar = _context_tar(
            Path(context), Path(dockerfile) if dockerfile is not None else None, archive
        )
        archive.seek(0)

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := archive.read(_CHUNK):
                yield chunk

        image: ImageDetail | None = None
        with translate_transport_errors(client.config):
            async with client._http.stream(
                "POST",
                "/v1/images/build",
                params={"name": name, "dockerfile": in_tar},
                content=chunks(),
                headers={"content-type": "application/x-tar"},
                timeout=stream_timeout(client.config),
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "progress":
                        if on_progress is not None:
                            on_progress(str(event.get("line", "")))
                    elif event.get("type") == "image":
                        image = ImageDetail.from_json(event["image"])
                    elif event.get("type") == "error":
                        error = event.get("error") or {}
                        exc = api_error(
                            str(error.get("code")),
                            str(error.get("message")),
                            status=int(error.get("status") or 422),
                        )
                        if isinstance(exc, ImageBuildFailed):
                            exc.output_tail = [str(x) for x in error.get("output_tail") or []]
                        raise exc
    if image is None:
        raise HutchConnectionError(f"the build of {name} ended without a result; build again")
    return image
