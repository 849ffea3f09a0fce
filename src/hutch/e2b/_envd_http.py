"""envd's plain-HTTP routes: ``GET /health`` and ``GET/POST /files`` (octet-stream or
multipart uploads, gzip both ways, signed URLs), on the files routes' agent helpers."""

from __future__ import annotations

import contextlib
import hmac
import posixpath
import re
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hutch._wire import Kind
from hutch._wire.agent_ops import WriteRequest
from hutch.e2b._errors import E2bError, from_api_error
from hutch.e2b._filesystem import METADATA_XATTR
from hutch.e2b._identity import DEFAULT_USER, SANDBOX_HEADER, Users, in_home, user_of
from hutch.e2b._tokens import AccessTokens
from hutch.node import AgentError, AgentStream, parse_result
from hutch.server.routes import UPLOAD_CHUNK, ApiError, Services, as_api_error, check_path

ACCESS_HEADER = "x-access-token"


def _sandbox(request: Request) -> str:
    return request.headers.get(SANDBOX_HEADER, "")


def check_file_access(request: Request, tokens: AccessTokens, operation: str) -> None:
    """The access token, or a signed URL for this path, operation and user (not expired)."""
    sandbox_id = _sandbox(request)
    if tokens.is_valid(sandbox_id, request.headers.get(ACCESS_HEADER)):
        return
    signature = request.query_params.get("signature")
    if signature is None:
        raise E2bError(401, "missing or wrong X-Access-Token (the sandbox's envdAccessToken)")
    fields = signed_fields(request, operation)
    if not hmac.compare_digest(tokens.signature(sandbox_id, *fields), signature):
        raise E2bError(401, "the URL signature does not match this path, user and expiry")
    expires = fields[3]
    if expires and expires < time.time():
        raise E2bError(401, "signature is already expired")  # envd's words; the SDKs test them


def signed_fields(request: Request, operation: str) -> tuple[str, str, str, int]:
    """What a signed URL's signature covers: path, operation, user and expiry."""
    raw_expiry = request.query_params.get("signature_expiration") or "0"
    try:
        expires = int(raw_expiry)
    except ValueError:
        raise E2bError(400, "signature_expiration must be a unix time in seconds") from None
    user = request.query_params.get("username") or ""
    path = request.query_params.get("path") or ""
    return path, operation, user, expires


def _file_user(request: Request) -> str:
    """Who /files acts for: ``username``, else the Basic-auth user, else E2B's ``user``."""
    return request.query_params.get("username") or user_of(request.headers)


_METADATA_HEADER = "x-metadata-"
_METADATA_KEY = re.compile(r"\A[A-Za-z0-9!#$%&'*+\-.^_`|~]+\Z")


def _metadata(request: Request) -> dict[str, str]:
    """``X-Metadata-<key>: value`` headers as E2B metadata (keys lowercased, as envd does)."""
    found: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower().startswith(_METADATA_HEADER):
            key = name[len(_METADATA_HEADER) :].lower()
            if not _METADATA_KEY.match(key):
                raise E2bError(400, f"invalid metadata key {key!r}: use HTTP token characters")
            found[key] = value
    return found


def _path(request: Request, name: str | None = None) -> str:
    path = request.query_params.get("path") or name
    if not path:
        raise E2bError(400, "give the file path in the 'path' query parameter")
    return in_home(path, _file_user(request))


async def _first_event(stream: AgentStream) -> dict[str, Any]:
    """The stream's first EVENT; an error RESULT raises the agent's error (the app maps it)."""
    async for frame in stream:
        if frame.kind is Kind.EVENT:
            return frame.json()
        if frame.kind is Kind.RESULT:
            parse_result(frame)
            raise AgentError("bad_response", "the agent ended the stream before starting")
    raise AgentError("bad_response", "the agent ended the stream early")


async def _result(stream: AgentStream) -> dict[str, Any]:
    async for frame in stream:
        if frame.kind is Kind.RESULT:
            return parse_result(frame)
    raise AgentError("bad_response", "the agent ended the stream without a result")


async def health(request: Request) -> Response:
    return Response(status_code=204)


async def read_file(request: Request) -> Response:
    svc = request.scope["hutch.services"]
    check_file_access(request, request.scope["hutch.e2b.tokens"], "read")
    sandbox_id = _sandbox(request)
    path = check_path(_path(request))
    conn, stream = await svc.sandboxes.open_own(sandbox_id, {"op": "read", "path": path})
    try:
        opened = await _first_event(stream)
    except BaseException:
        await conn.close()
        raise
    gzip = "gzip" in request.headers.get("accept-encoding", "")
    headers: dict[str, str] = {}
    if gzip:
        headers["Content-Encoding"] = "gzip"
    elif opened.get("length") is not None:
        headers["Content-Length"] = str(opened["length"])
    name = posixpath.basename(path)
    headers["Content-Disposition"] = f'attachment; filename="{name}"'

    async def body() -> AsyncIterator[bytes]:
        packer = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        done = False
        try:
            async for frame in stream:
                if frame.kind is Kind.DATA:
                    yield packer.compress(frame.payload) if packer else frame.payload
                elif frame.kind is Kind.RESULT:
                    done = True
                    parse_result(frame)
            if packer is not None:
                yield packer.flush()
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    await stream.aclose()
            await conn.close()

    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


async def _chunks_of(request: Request) -> AsyncIterator[bytes]:
    if request.headers.get("content-encoding", "").lower() == "gzip":
        unpacker = zlib.decompressobj(31)
        async for chunk in request.stream():
            out = unpacker.decompress(chunk)
            if out:
                yield out
        if not unpacker.eof:
            raise E2bError(400, "the gzip body ended early")
        return
    async for chunk in request.stream():
        yield chunk


async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


async def _text_chunks(text: str) -> AsyncIterator[bytes]:
    yield text.encode()


class _Upload:
    """One /files POST: who it writes as and the metadata every file in it gets."""

    def __init__(self, request: Request) -> None:
        self.svc: Services = request.scope["hutch.services"]
        self.users: Users = request.scope["hutch.e2b.users"]
        self.sandbox_id = _sandbox(request)
        self.user = _file_user(request)
        self.metadata = _metadata(request)

    async def open(self, path: str) -> tuple[Any, AgentStream]:
        """The agent's write stream, in place (as envd writes), owned by the user; an image
        without E2B's ``user`` writes as its default (root), as commands do there."""
        request: WriteRequest = {
            "op": "write",
            "path": path,
            "parents": True,
            "in_place": True,
            "xattrs": {METADATA_XATTR + k: v for k, v in self.metadata.items()},
            "xattr_prefix": METADATA_XATTR,
        }
        owner = self.users.effective(self.sandbox_id, self.user)
        if owner is not None:
            request["owner"] = owner
        conn, stream = await self.svc.sandboxes.open_own(self.sandbox_id, request)
        try:
            await _first_event(stream)
        except AgentError as exc:
            await conn.close()
            if exc.code != "user_not_found" or owner != DEFAULT_USER:
                raise
            self.users.mark_missing(self.sandbox_id)
            return await self.open(path)
        except BaseException:
            await conn.close()
            raise
        return conn, stream


async def _write(upload: _Upload, path: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
    check_path(path)
    conn, stream = await upload.open(path)
    done = False
    try:
        async for chunk in chunks:
            if chunk:
                await stream.send_stdin(chunk, chunk_size=UPLOAD_CHUNK)
            if stream.finished:
                break
        await stream.close_stdin()
        result = await _result(stream)
        done = True
    finally:
        if not done:
            with contextlib.suppress(Exception):
                await stream.aclose()
        await conn.close()
    written = str(result["path"])
    entry: dict[str, Any] = {"name": posixpath.basename(written), "type": "file", "path": written}
    if upload.metadata:  # envd names metadata only when the write set some
        entry["metadata"] = upload.metadata
    return entry


async def write_file(request: Request) -> Response:
    check_file_access(request, request.scope["hutch.e2b.tokens"], "write")
    files = _Upload(request)
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            written = []
            async with request.form(max_files=10_000, max_part_size=64 * 1024 * 1024) as form:
                # envd reads every part named `file`, with or without a filename: a plain
                # form field (`form.append('file', 'text')`) is a file's content too.
                uploads = [
                    v for k, v in form.multi_items() if isinstance(v, UploadFile) or k == "file"
                ]
                if not uploads:
                    raise E2bError(400, "the multipart body has no file part")
                single = request.query_params.get("path") if len(uploads) == 1 else None
                for upload in uploads:
                    name = upload.filename if isinstance(upload, UploadFile) else None
                    path = in_home(single or name or "", files.user)
                    if path == in_home("", files.user):
                        raise E2bError(400, "name each file part with its path")
                    chunks = (
                        _upload_chunks(upload)
                        if isinstance(upload, UploadFile)
                        else _text_chunks(upload)
                    )
                    written.append(await _write(files, path, chunks))
            return JSONResponse(written)
        path = _path(request)
        return JSONResponse([await _write(files, path, _chunks_of(request))])
    except ClientDisconnect:
        raise E2bError(400, "the upload was cut off before its end") from None


def build_envd_http_app() -> Starlette:
    async def on_e2b(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E2bError)
        return exc.response()

    async def on_api(_: Request, exc: Exception) -> Response:
        error = as_api_error(exc)
        assert error is not None
        return from_api_error(error).response()

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/files", read_file, methods=["GET"]),
            Route("/files", write_file, methods=["POST"]),
        ],
        exception_handlers={E2bError: on_e2b, ApiError: on_api, AgentError: on_api},
    )


__all__ = ["DEFAULT_USER", "build_envd_http_app"]
