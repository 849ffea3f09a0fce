"""Image routes: pull, import, inspect, tag, remove (`/v1/images/...`).

Import and pull run in a worker thread (they unpack layers); the image store commits
atomically, so a failure at any point leaves nothing half-stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from hutch.runtime import (
    Image,
    ImageArchitectureError,
    ImageNotFound,
    ImageStore,
    RegistryError,
    import_archive,
    pull,
)
from hutch.runtime import ImageInvalid as RuntimeImageInvalid
from hutch.server._errors import (
    ImageInUse,
    ImageInvalid,
    ImageNotFoundError,
    InvalidRequest,
    RegistryFailed,
)
from hutch.server._models import ErrorBody, ImageInfo, ImageList, Strict
from hutch.server.services._image_owners import ImageOwners

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 422, 429, 502)
}


class ImageConfigInfo(BaseModel):
    env: list[str]
    working_dir: str
    user: str
    entrypoint: list[str]
    cmd: list[str]


class ImageDetail(BaseModel):
    name: str
    id: str
    size_bytes: int
    created_at: str
    config: ImageConfigInfo
    labels: dict[str, str]
    sandboxes: int = Field(description="how many sandboxes run on this image's content")


class ImagePull(Strict):
    ref: str = Field(min_length=1, max_length=1024, description="e.g. 127.0.0.1:5000/app:1")
    name: str | None = Field(default=None, description="store name; default: the reference")
    username: str | None = None
    password: str | None = None
    insecure: bool = Field(default=False, description="plain HTTP / unverified TLS")


class ImageTag(Strict):
    name: str = Field(min_length=1, max_length=255)


def _store(request: Request) -> ImageStore:
    images: ImageStore = request.app.state.services.images
    return images


def _in_use(request: Request, image_id: str) -> int:
    store = request.app.state.services.store
    return sum(1 for r in store.list_sandboxes() if r.image_id == image_id)


def _detail(request: Request, image: Image) -> ImageDetail:
    return detail_of(image, _in_use(request, image.id))


def detail_of(image: Image, sandboxes: int) -> ImageDetail:
    c = image.config
    return ImageDetail(
        name=image.name,
        id=image.id,
        size_bytes=image.size_bytes,
        created_at=image.created_at,
        config=ImageConfigInfo(
            env=list(c.env),
            working_dir=c.working_dir,
            user=c.user,
            entrypoint=list(c.entrypoint),
            cmd=list(c.cmd),
        ),
        labels=dict(image.labels),
        sandboxes=sandboxes,
    )


def _get(store: ImageStore, name: str) -> Image:
    try:
        return store.get(name)
    except ImageNotFound as exc:
        raise ImageNotFoundError(str(exc)) from None


def _owners(request: Request) -> ImageOwners:
    owners: ImageOwners = request.app.state.services.sandboxes.image_owners
    return owners


def _get_visible(request: Request, name: str) -> Image:
    """The image, if the caller's team may see it (another team's: as if unknown)."""
    image = _get(_store(request), name)
    if not _owners(request).visible(name, image):
        raise ImageNotFoundError(str(ImageNotFound(name)))
    return image


def _exists(store: ImageStore, name: str) -> bool:
    try:
        store.get(name)
    except ImageNotFound:
        return False
    return True


async def _run_store_op(fn: Callable[[], Image]) -> Image:
    try:
        return await asyncio.to_thread(fn)
    except ImageArchitectureError as exc:
        raise ImageInvalid(str(exc), code="image_architecture") from None
    except RuntimeImageInvalid as exc:
        raise ImageInvalid(str(exc)) from None
    except RegistryError as exc:
        raise RegistryFailed(str(exc)) from None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def build_images_router(
    require_key: Callable[..., Coroutine[Any, Any, object]],
) -> APIRouter:
    router = APIRouter(prefix="/v1/images", dependencies=[Depends(require_key)], responses=_ERRORS)

    @router.get("", response_model=ImageList)
    async def list_images(request: Request) -> ImageList:
        return ImageList(
            images=[
                ImageInfo(name=i.name, id=i.id, size_bytes=i.size_bytes, created_at=i.created_at)
                for i in _owners(request).visible_names(_store(request).list())
            ]
        )

    @router.post("/pull", status_code=201, response_model=ImageDetail)
    async def pull_image(request: Request, body: ImagePull) -> ImageDetail:
        store = _store(request)
        target = body.name or body.ref
        _owners(request).check_write(target, _exists(store, target))
        image = await _run_store_op(
            lambda: pull(
                store,
                body.ref,
                body.name,
                username=body.username,
                password=body.password,
                insecure=body.insecure,
            )
        )
        _owners(request).claim(image.name)
        return _detail(request, image)

    @router.post("/import", status_code=201, response_model=ImageDetail)
    async def import_image(
        request: Request, name: Annotated[str | None, Query()] = None
    ) -> ImageDetail:
        """The body is the archive itself (`docker save` tarball or OCI archive, any size)."""
        store = _store(request)
        if name is not None:
            _owners(request).check_write(name, _exists(store, name))
        with store.staging() as stage:
            path = stage / "upload.tar"
            with open(path, "wb") as f:  # noqa: ASYNC230 - local disk, chunk-sized writes
                async for chunk in request.stream():
                    f.write(chunk)
            image = await _run_store_op(lambda: import_archive(store, path, name))
        _owners(request).claim(image.name)
        return _detail(request, image)

    @router.get("/{name:path}", response_model=ImageDetail)
    async def inspect_image(request: Request, name: str) -> ImageDetail:
        return _detail(request, _get_visible(request, name))

    @router.post("/{name:path}/tags", status_code=201, response_model=ImageDetail)
    async def tag_image(request: Request, name: str, body: ImageTag) -> ImageDetail:
        store = _store(request)
        _get_visible(request, name)
        _owners(request).check_write(body.name, _exists(store, body.name))
        image = await _run_store_op(lambda: store.tag(name, body.name))
        _owners(request).claim(body.name)
        return _detail(request, image)

    @router.delete("/{name:path}", status_code=204)
    async def remove_image(request: Request, name: str) -> Response:
        store = _store(request)
        image = _get_visible(request, name)
        _owners(request).check_write(name, True)
        other_names = [i for i in store.list() if i.id == image.id and i.name != name]
        users = _in_use(request, image.id)
        if users and (not other_names or name == image.id):
            raise ImageInUse(
                f"image {name!r} is used by {users} sandbox(es); destroy them first "
                "(`hutch ls` lists them), then remove the image"
            )
        host = getattr(request.app.state.services, "host", None)
        if host is not None and not other_names:
            await host.drain_pooled(image.id)
        try:
            store.remove(name)
        except ImageNotFound as exc:
            raise ImageNotFoundError(str(exc)) from None
        _owners(request).forget(name)
        return Response(status_code=204)

    return router
