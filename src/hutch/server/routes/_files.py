"""File and git routes: everything is done by the sandbox's agent; the server only streams.

The server never opens a path of a sandbox itself: an upload's body goes to the agent as DATA
frames as it arrives, a download's DATA frames go out as the HTTP body as they arrive. Memory
per transfer is bounded by the agent client's per-stream buffer and the socket's drain.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from hutch._wire import Kind
from hutch._wire.agent_calls import StreamRequest
from hutch.node import (
    AgentConnection,
    AgentError,
    AgentStream,
    parse_result,
)
from hutch.server._agent_errors import as_api_error
from hutch.server._deps import FRAMES_MEDIA_TYPE, Services, Svc
from hutch.server._errors import (
    GitError,
    InvalidRequest,
)
from hutch.server._relay import relay_frames

MAX_PATH_BYTES = 4096
UPLOAD_CHUNK = 1024 * 1024
GIT_TIMEOUT = 600.0


# Agent error code -> HTTP status. Codes the agent may send that are not here become 422.
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(BaseModel):
    name: str
    path: str = Field(description="relative to the listed directory")
    absolute_path: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mode: int
    mtime: float
    target: str | None = Field(default=None, description="a symlink's target")
    owner: str = Field(description="user name (the uid as text when the image has none)")
    group: str = Field(description="group name (the gid as text when the image has none)")


class FileList(BaseModel):
    entries: list[FileEntry]
    truncated: bool


class Exists(BaseModel):
    exists: bool


class Written(BaseModel):
    path: str
    size: int


class PathResult(BaseModel):
    path: str


class MkdirRequest(Strict):
    path: str
    recursive: bool = False
    mode: int | None = Field(default=None, ge=0, le=0o7777)


class MoveRequest(Strict):
    source: str
    destination: str
    overwrite: bool = True


class WatchRequest(Strict):
    path: str = "."
    recursive: bool = True
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class GitCheckoutRequest(Strict):
    url: str
    branch: str | None = None
    depth: int | None = Field(default=None, ge=1)
    target_dir: str | None = None


class GitCheckoutResult(BaseModel):
    path: str
    url: str
    branch: str | None
    commit: str


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def entries_batch(payload: bytes) -> bytes:
    """A batch of listing entries from the agent (a JSON array of objects), without its
    brackets, ready to splice into the answer. Checked first: the agent is untrusted.

    Raises:
        AgentError: the batch is not a JSON array of objects.
    """
    try:
        value = json.loads(payload, parse_constant=_no_constants)
    except ValueError as exc:
        raise AgentError("bad_response", f"the agent sent a bad listing: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise AgentError("bad_response", "the agent sent a listing that is not a list of entries")
    return payload.strip()[1:-1].strip()


def streams_body(scope: Any) -> bool:
    """File uploads stream their body to the agent: the body size limit does not apply."""
    return scope["method"] == "PUT" and str(scope["path"]).endswith("/files/content")


def check_path(path: str, field: str = "path") -> str:
    """422 ``invalid_path`` for a path the agent could never open; say what to do."""
    problem = None
    if not path:
        problem = "is empty"
    elif "\0" in path:
        problem = "contains a NUL byte"
    elif len(path.encode(errors="surrogateescape")) > MAX_PATH_BYTES:
        problem = f"is longer than {MAX_PATH_BYTES} bytes"
    if problem is not None:
        raise InvalidRequest(
            f"'{field}' {problem}; give a path inside the sandbox, e.g. 'data/a.csv' "
            "(relative to /workspace) or '/tmp/a.csv'",
            code="invalid_path",
            fields=[{"loc": ["query", field], "message": problem}],
        )
    return path


async def _open(svc: Services, sandbox_id: str, request: StreamRequest) -> AgentStream:
    return await svc.sandboxes.open_stream(sandbox_id, request)


async def _open_own(
    svc: Services, sandbox_id: str, request: StreamRequest
) -> tuple[AgentConnection, AgentStream]:
    """A stream on a connection of its own, for transfers and watches: the agent client's
    backpressure holds up a whole connection, so a slow reader of a 1 GiB download (or a
    watch nobody reads) must not stall the sandbox's other requests. Close the connection
    when the stream ends."""
    return await svc.sandboxes.open_own(sandbox_id, request)


async def _first_event(stream: AgentStream) -> dict[str, Any]:
    """The stream's first EVENT; an error RESULT (or a broken stream) raises the agent's error."""
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


_GIT_SCHEME = re.compile(r"^(https?|git|ssh|file)://", re.IGNORECASE)
_GIT_ERRORS: tuple[tuple[re.Pattern[str], int, str, str], ...] = (
    (
        re.compile(r"repository not exported|Repository not found", re.I),
        404,
        "git_repository_not_found",
        "no repository at that URL (or it is not exported); check it",
    ),
    (
        re.compile(r"Remote branch .* not found|couldn't find remote ref", re.I),
        404,
        "git_branch_not_found",
        "the repository has no such branch or tag; check `branch`",
    ),
    (
        re.compile(
            r"Authentication failed|could not read Username|terminal prompts disabled|"
            r"Permission denied \(publickey|HTTP Basic: Access denied|returned error: 40[13]",
            re.I,
        ),
        403,
        "git_auth_failed",
        "the git server refused the credentials; put a token in the URL "
        "(https://TOKEN@host/repo.git) or check its rights",
    ),
    (
        re.compile(
            r"Could not resolve host|Connection refused|unable to connect|Failed to connect|"
            r"timed out|Network is unreachable|unable to look up|No route to host|"
            r"Could not connect",
            re.I,
        ),
        502,
        "git_unreachable",
        "the git server could not be reached from the sandbox; check the host and the "
        "sandbox's network setting",
    ),
    (
        re.compile(
            r"does not appear to be a git repository|Repository not found|not found|"
            r"does not exist",
            re.I,
        ),
        404,
        "git_repository_not_found",
        "no repository at that URL; check it",
    ),
    (
        re.compile(r"already exists and is not an empty directory", re.I),
        409,
        "file_exists",
        "the target directory is not empty; choose another target_dir or remove it",
    ),
)


def git_url(url: str) -> str:
    """Accept http(s)://, git://, ssh://, file:// URLs, scp-like ``user@host:path`` and paths.

    Refuses git's command-running transports (``ext::``) and anything that looks like an option.
    """
    problem = None
    if not url or "\0" in url or "\n" in url:
        problem = "is empty or contains control characters"
    elif url.startswith("-"):
        problem = "starts with '-'"
    elif "::" in url.split("/", 1)[0]:
        problem = "uses a transport helper (like ext::), which is not allowed"
    elif "://" in url and not _GIT_SCHEME.match(url):
        problem = "has an unsupported scheme; use http(s)://, git://, ssh:// or file://"
    if problem is not None:
        raise InvalidRequest(
            f"git url {problem}",
            code="invalid_git_url",
            fields=[{"loc": ["body", "url"], "message": problem}],
        )
    return url


def git_error(stderr: str) -> GitError:
    tail = stderr.strip()[-1500:]
    for pattern, status, code, hint in _GIT_ERRORS:
        if pattern.search(stderr):
            return GitError(f"git clone failed: {hint}. git said: {tail}", code=code, status=status)
    return GitError(f"git clone failed: {tail}", code="git_failed", status=422)


async def _run(
    svc: Services, sandbox_id: str, argv: list[str], cwd: str | None
) -> tuple[int, str, str]:
    stream = await _open(
        svc,
        sandbox_id,
        {
            "op": "exec",
            "argv": argv,
            "cwd": cwd,
            "env": {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "LC_ALL": "C"},
            "timeout": GIT_TIMEOUT,
            "stdin": False,
        },
    )
    out: list[bytes] = []
    err: list[bytes] = []
    limit = 1024 * 1024
    async with stream:
        result = None
        async for frame in stream:
            if frame.kind is Kind.DATA:
                target = out if frame.channel == 1 else err
                if sum(map(len, target)) < limit:
                    target.append(frame.payload)
            elif frame.kind is Kind.RESULT:
                result = parse_result(frame)
    assert result is not None
    code = int(result["exit_code"])
    return code, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")


def build_files_router(require_key: Any) -> APIRouter:
    router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", dependencies=[Depends(require_key)])

    @router.put("/files/content", response_model=Written)
    async def write_file(
        svc: Svc,
        sandbox_id: str,
        request: Request,
        path: Annotated[str, Query()],
        mode: Annotated[int | None, Query(ge=0, le=0o7777)] = None,
        parents: bool = True,
    ) -> Written:
        """Write the raw request body to ``path`` (streamed; replaced atomically at the end)."""
        check_path(path)
        conn, stream = await _open_own(
            svc, sandbox_id, {"op": "write", "path": path, "mode": mode, "parents": parents}
        )
        done = False
        try:
            try:
                await _first_event(stream)
            except Exception as exc:
                if as_api_error(exc) is None:
                    raise
                # Read (and drop) the rest of the body, so that the client, which sends all of
                # it before it reads an answer, gets this error rather than a broken pipe.
                with contextlib.suppress(ClientDisconnect):
                    async for _ in request.stream():
                        pass
                raise
            # NB: the body's pieces are joined into frames of up to UPLOAD_CHUNK: one copy,
            # and few frames for the agent to decode.
            parts: list[bytes] = []
            pending = 0
            async for chunk in request.stream():
                parts.append(chunk)
                pending += len(chunk)
                if pending >= UPLOAD_CHUNK:
                    await stream.send_stdin(b"".join(parts), chunk_size=UPLOAD_CHUNK)
                    parts.clear()
                    pending = 0
                    if stream.finished:  # the agent gave up early (disk full, ...)
                        break
            if parts and not stream.finished:
                await stream.send_stdin(b"".join(parts), chunk_size=UPLOAD_CHUNK)
            await stream.close_stdin()
            result = await _result(stream)
            done = True
        except ClientDisconnect:
            raise InvalidRequest(
                "the upload was cut off before its end; nothing was written"
            ) from None
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    await stream.aclose()
            await conn.close()
        return Written(path=result["path"], size=result["size"])

    @router.get(
        "/files/content",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def read_file(
        svc: Svc,
        sandbox_id: str,
        path: Annotated[str, Query()],
        offset: Annotated[int, Query(ge=0)] = 0,
        length: Annotated[int | None, Query(ge=0)] = None,
    ) -> StreamingResponse:
        """The file's bytes (``offset``/``length`` for a range), streamed as they are read."""
        check_path(path)
        conn, stream = await _open_own(
            svc, sandbox_id, {"op": "read", "path": path, "offset": offset, "length": length}
        )
        try:
            opened = await _first_event(stream)
        except BaseException:
            await conn.close()
            raise
        headers = {}
        if opened.get("length") is not None:
            headers["Content-Length"] = str(opened["length"])
        if opened.get("size") is not None:
            headers["X-File-Size"] = str(opened["size"])

        async def body() -> AsyncIterator[bytes]:
            done = False
            try:
                async for frame in stream:
                    if frame.kind is Kind.DATA:
                        yield frame.payload
                    elif frame.kind is Kind.RESULT:
                        done = True
                        parse_result(frame)  # an error now can only cut the body short
            finally:
                if not done:
                    with contextlib.suppress(Exception):
                        await stream.aclose()
                await conn.close()

        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)

    @router.get("/files/stat", response_model=FileEntry)
    async def stat(svc: Svc, sandbox_id: str, path: Annotated[str, Query()]) -> FileEntry:
        check_path(path)
        result = await svc.sandboxes.agent_call(sandbox_id)("stat", path=path)
        return FileEntry.model_validate({k: v for k, v in result.items() if k != "exists"})

    @router.get("/files/exists", response_model=Exists)
    async def exists(svc: Svc, sandbox_id: str, path: Annotated[str, Query()]) -> Exists:
        check_path(path)
        result = await svc.sandboxes.agent_call(sandbox_id)("stat", path=path, missing_ok=True)
        return Exists(exists=result["exists"])

    @router.get("/files/list", response_model=FileList)
    async def list_files(
        svc: Svc,
        sandbox_id: str,
        path: Annotated[str, Query()] = ".",
        recursive: bool = False,
        include_hidden: bool = False,
        limit: Annotated[int, Query(ge=1, le=1_000_000)] = 100_000,
    ) -> Response:
        check_path(path)
        stream = await _open(
            svc,
            sandbox_id,
            {
                "op": "list",
                "path": path,
                "recursive": recursive,
                "include_hidden": include_hidden,
                "limit": limit,
            },
        )
        batches: list[bytes] = []
        result: dict[str, Any] = {}
        async with stream:
            async for frame in stream:
                if frame.kind is Kind.DATA:
                    batches.append(entries_batch(frame.payload))
                elif frame.kind is Kind.RESULT:
                    result = parse_result(frame)
        truncated = b"true" if result.get("truncated") else b"false"
        body = (
            b'{"entries":['
            + b",".join(b for b in batches if b)
            + b'],"truncated":'
            + truncated
            + b"}"
        )
        return Response(body, media_type="application/json")

    @router.post("/files/mkdir", response_model=PathResult)
    async def mkdir(svc: Svc, sandbox_id: str, body: MkdirRequest) -> PathResult:
        check_path(body.path)
        result = await svc.sandboxes.agent_call(sandbox_id)(
            "mkdir", path=body.path, recursive=body.recursive, mode=body.mode
        )
        return PathResult(path=result["path"])

    @router.delete("/files", status_code=204)
    async def remove(
        svc: Svc,
        sandbox_id: str,
        path: Annotated[str, Query()],
        recursive: bool = False,
        file_only: bool = False,
    ) -> Response:
        check_path(path)
        await svc.sandboxes.agent_call(sandbox_id)(
            "remove", path=path, recursive=recursive, file_only=file_only
        )
        return Response(status_code=204)

    @router.post("/files/move", response_model=PathResult)
    async def move(svc: Svc, sandbox_id: str, body: MoveRequest) -> PathResult:
        check_path(body.source, "source")
        check_path(body.destination, "destination")
        result = await svc.sandboxes.agent_call(sandbox_id)(
            "move",
            source=body.source,
            destination=body.destination,
            overwrite=body.overwrite,
        )
        return PathResult(path=result["path"])

    @router.post(
        "/files/watch",
        response_class=StreamingResponse,
        responses={200: {"content": {FRAMES_MEDIA_TYPE: {}}, "description": "binary frames"}},
    )
    async def watch(svc: Svc, sandbox_id: str, body: WatchRequest) -> StreamingResponse:
        """EVENT frames ``{"event": "create"|"modify"|"delete"|"move"|"attrib", "path", ...}``
        until the client closes the response (which stops the watch in the agent)."""
        check_path(body.path)
        conn, stream = await _open_own(
            svc,
            sandbox_id,
            {
                "op": "watch",
                "path": body.path,
                "recursive": body.recursive,
                "include": body.include,
                "exclude": body.exclude,
            },
        )
        try:
            first = await _first_event(stream)
        except BaseException:
            await conn.close()
            raise

        async def frames() -> AsyncIterator[bytes]:
            from hutch._wire import encode_json_frame

            try:
                yield encode_json_frame(Kind.EVENT, 0, first)
                async for part in relay_frames(stream):
                    yield part
            finally:
                await conn.close()

        return StreamingResponse(frames(), media_type=FRAMES_MEDIA_TYPE)

    @router.post("/git/checkout", response_model=GitCheckoutResult)
    async def git_checkout(
        svc: Svc, sandbox_id: str, body: GitCheckoutRequest
    ) -> GitCheckoutResult:
        """``git clone`` inside the sandbox (the sandbox's network, the image's git)."""
        url = git_url(body.url)
        if body.branch is not None and (not body.branch or body.branch.startswith("-")):
            raise InvalidRequest("'branch' must be a branch or tag name", code="invalid_request")
        target = body.target_dir
        if target is None:
            name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
            target = name.removesuffix(".git") or "repo"
        check_path(target, "target_dir")
        argv = ["git", "clone", "--quiet"]
        if body.depth is not None:
            argv += ["--depth", str(body.depth)]
        if body.branch is not None:
            argv += ["--branch", body.branch]
        argv += ["--", url, target]
        code, _, err = await _run(svc, sandbox_id, argv, None)
        if code == 127:
            raise InvalidRequest(
                "git is not installed in this sandbox's image; use the default image or add git",
                code="git_not_installed",
            )
        if code != 0:
            raise git_error(err)
        stat = await svc.sandboxes.agent_call(sandbox_id)("stat", path=target)
        path = stat["absolute_path"]
        code, out, err = await _run(svc, sandbox_id, ["git", "-C", path, "rev-parse", "HEAD"], None)
        return GitCheckoutResult(path=path, url=url, branch=body.branch, commit=out.strip())

    return router
