"""`POST /v1/images/build`: a Dockerfile and its context, sent as one tar, built with buildah
(as `hutch image build` does on the host) and stored; progress streams back as NDJSON.

The body is the build context as a tar (optionally gzipped), as Docker's build API takes it;
`dockerfile` names the Dockerfile inside it. The context may hold only regular files and
directories (no links, devices or fifos: checked before anything is unpacked), and is unpacked
with tarfile's `data` filter too. The Dockerfile may name no transport that reads the host
(`FROM oci:/path`), fetch nothing (`ADD <url>`), nor take `RUN --mount`; buildah runs with no
network at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import tarfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from hutch.runtime import (
    BuildError,
    ImageNotFound,
    ImageStore,
    build_image,
    check_image_name,
    check_offline_bases,
    check_untrusted_dockerfile,
)
from hutch.runtime import ImageInvalid as RuntimeImageInvalid
from hutch.server._errors import BodyTooLarge, ImageBuildFailed, ImageInvalid, InvalidRequest
from hutch.server._models import ErrorBody
from hutch.server.services._image_owners import ImageOwners

NDJSON = "application/x-ndjson"
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 413, 422)
}


class _Lines:
    """A text stream for buildah's output that hands each line to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop = loop
        self._queue = queue

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        return len(text)

    def flush(self) -> None:
        pass


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


async def _receive_context(request: Request, path: Path, limit: int) -> None:
    size = 0
    with open(path, "wb") as f:  # noqa: ASYNC230 - local disk, chunk-sized writes
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(_too_large(limit))
            f.write(chunk)


def _too_large(limit: int) -> str:
    return (
        f"the build context is larger than {limit} bytes; leave out what the build does not "
        "need (a .dockerignore does not apply here: send less), or raise "
        "HUTCH_MAX_BUILD_CONTEXT_BYTES on the server"
    )


# At most this many entries in a build context (each costs memory before anything is unpacked).
MAX_CONTEXT_MEMBERS = 100_000


def _context_members(tar: tarfile.TarFile, limit: int) -> list[tarfile.TarInfo]:
    """Every entry of the context, all of them regular files or directories: links, devices
    and fifos are refused before anything is unpacked (tarfile's `data` filter alone is not
    enough on every Python: CVE-2025-4517 lets a chain of symlinks point out of it)."""
    members: list[tarfile.TarInfo] = []
    size = 0
    while (member := tar.next()) is not None:
        if not (member.isreg() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise InvalidRequest(
                f"the build context has a {kind} at {member.name!r}: links and special files "
                "are not allowed in a build context; replace each link by the file it "
                "points to",
                code="build_context_invalid",
            )
        members.append(member)
        if len(members) > MAX_CONTEXT_MEMBERS:
            raise InvalidRequest(
                f"the build context has more than {MAX_CONTEXT_MEMBERS} entries; send only "
                "what the build needs",
                code="build_context_invalid",
            )
        size += member.size if member.isreg() else 0
        if size > limit:
            raise BodyTooLarge(_too_large(limit))
    return members


def _unpack_context(archive: Path, dest: Path, limit: int) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _context_members(tar, limit)
            dest.mkdir()
            # The `data` filter stays as a second wall (absolute and `..` paths, modes).
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidRequest(
            f"the build context is not a usable tar: {exc}; send the context directory as a "
            "tar (paths inside it, links that stay inside it)",
            code="build_context_invalid",
        ) from None


def _dockerfile_in(context: Path, name: str) -> Path:
    normal = posixpath.normpath(name)
    if posixpath.isabs(normal) or normal.startswith(".."):
        raise InvalidRequest(
            f"dockerfile {name!r} must be a path inside the build context", code="invalid_request"
        )
    path = context / normal
    if path.is_symlink() or not path.is_file():
        raise InvalidRequest(
            f"the build context has no Dockerfile at {name!r}; add it to the tar or name it "
            "with ?dockerfile=",
            code="invalid_request",
        )
    return path


def _has_image(store: ImageStore, ref: str) -> bool:
    try:
        store.get(ref)
    except (ImageNotFound, ValueError, OSError):
        return False
    return True


def _visible_image(store: ImageStore, owners: ImageOwners, ref: str) -> bool:
    try:
        return owners.visible(ref, store.get(ref))
    except ImageNotFound:
        return False


def build_image_build_router(
    require_key: Callable[..., Coroutine[Any, Any, object]],
) -> APIRouter:
    router = APIRouter(prefix="/v1/images", dependencies=[Depends(require_key)], responses=_ERRORS)

    @router.post(
        "/build",
        response_class=StreamingResponse,
        responses={200: {"content": {NDJSON: {}}, "description": "progress lines, then a result"}},
    )
    async def build(
        request: Request,
        name: Annotated[str, Query(min_length=1, max_length=255)],
        dockerfile: Annotated[str, Query(min_length=1, max_length=4096)] = "Dockerfile",
    ) -> StreamingResponse:
        """Body: the build context as a tar (optionally gzipped) with the Dockerfile in it."""
        svc = request.app.state.services
        store: ImageStore = svc.images
        limit: int = svc.config.max_build_context_bytes
        try:
            check_image_name(name)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        owners: ImageOwners = svc.sandboxes.image_owners
        owners.check_write(name, _has_image(store, name))
        staging = store.staging()
        stage = staging.__enter__()
        try:
            await _receive_context(request, stage / "context.tar", limit)
            context = stage / "context"
            await asyncio.to_thread(_unpack_context, stage / "context.tar", context, limit)
            (stage / "context.tar").unlink()
            path = _dockerfile_in(context, dockerfile)
            try:
                text = path.read_text(errors="replace")
                check_untrusted_dockerfile(text)
                # Another team's image is no base: as if it were not stored.
                check_offline_bases(text, lambda ref: _visible_image(store, owners, ref))
            except ValueError as exc:
                raise InvalidRequest(str(exc), code="invalid_request") from None
        except BaseException:
            staging.__exit__(None, None, None)
            raise
        job = _BuildJob(staging)
        owners.claim(name)
        return StreamingResponse(
            _run_build(store, path, context, name, job),
            media_type=NDJSON,
            # Also when the client left before the stream started (the generator never ran).
            background=BackgroundTask(job.finish),
        )

    return router


class _BuildJob:
    """The staging dir of one build and the thread running it; `finish` waits for the thread,
    then removes the dir, once."""

    def __init__(self, staging: contextlib.AbstractContextManager[Path]) -> None:
        self._staging: contextlib.AbstractContextManager[Path] | None = staging
        self.task: asyncio.Future[Any] | None = None

    async def finish(self) -> None:
        if self.task is not None:
            # NB: a client that goes away does not stop buildah; its dir goes after it.
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.task)
        staging, self._staging = self._staging, None
        if staging is not None:
            staging.__exit__(None, None, None)


async def _run_build(
    store: ImageStore, dockerfile: Path, context: Path, name: str, job: _BuildJob
) -> AsyncIterator[bytes]:
    from hutch.server.routes._images import detail_of

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    def work() -> Any:
        try:
            return build_image(
                store,
                dockerfile,
                context,
                name,
                out=_Lines(loop, queue),
                source="api",
                untrusted=True,
            )
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    task = job.task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while (item := await queue.get()) is not done:
            yield _line({"type": "progress", "line": item})
        try:
            image = await task
        except BuildError as exc:
            yield _line(_error(ImageBuildFailed.code, str(exc), tail=exc.tail))
            return
        except RuntimeImageInvalid as exc:
            yield _line(_error(ImageInvalid.code, str(exc)))
            return
        except ValueError as exc:
            yield _line(_error(InvalidRequest.code, str(exc)))
            return
        yield _line({"type": "image", "image": detail_of(image, 0).model_dump()})
    finally:
        await job.finish()


def _error(code: str, message: str, *, tail: list[str] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": 422}
    if tail is not None:
        error["output_tail"] = tail
    return {"type": "error", "error": error}
