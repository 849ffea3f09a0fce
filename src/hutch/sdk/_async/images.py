"""Images on the server: pull, import, inspect, tag, remove (``/v1/images``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from hutch.sdk._http import (
    error_from_response,
    json_or_none,
    stream_timeout,
    translate_transport_errors,
)
from hutch.sdk._models import ImageDetail
from hutch.sdk._requests import path_segment

if TYPE_CHECKING:
    from hutch.sdk._async.client import AsyncClient

_CHUNK = 1 << 20


def _image_path(name: str) -> str:
    # Names hold '/' and ':' (registry/repo:tag): keep '/' as it is, the route takes a path.
    return "/v1/images/" + "/".join(path_segment(p) for p in name.split("/"))


async def pull_image(
    client: AsyncClient,
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
    client: AsyncClient, path: str | os.PathLike[str], *, name: str | None = None
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


async def get_image(client: AsyncClient, name: str) -> ImageDetail:
    return ImageDetail.from_json(await client.request("GET", _image_path(name)))


async def tag_image(client: AsyncClient, name: str, new_name: str) -> ImageDetail:
    body = await client.request("POST", _image_path(name) + "/tags", json={"name": new_name})
    return ImageDetail.from_json(body)


async def remove_image(client: AsyncClient, name: str) -> None:
    await client.request("DELETE", _image_path(name))
