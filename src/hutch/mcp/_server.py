"""`hutch mcp`: Hutch's sandboxes as Model Context Protocol tools.

The MCP server is a client of a Hutch server (the async SDK, ``HUTCH_URL``/``HUTCH_API_KEY``):
it holds no state of its own, so several MCP servers can front one Hutch. Tools exist for what
the SDK can do: create/list/destroy sandboxes, exec, processes, files, the code interpreter
and ports, with the names of DESIGN.md's SDK surface.

Arguments are checked strictly: an unknown or invalid argument is an error result whose text
names the field (``Error executing tool exec: ... bogus  Extra inputs are not permitted``), so a
model can correct itself. Errors from Hutch (no such sandbox, bad option) come back the same way,
with Hutch's message.
"""

# ruff: noqa: ASYNC109 -- `timeout` is a sandbox's lifetime or a command's limit, enforced
# by the Hutch server, not a client-side deadline.

from __future__ import annotations

import base64
import builtins
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent, TextContent

from hutch._wire.sandbox_options import DEFAULTS
from hutch.sdk import AsyncClient, AsyncSandbox, HutchError

INSTRUCTIONS = """\
Hutch runs isolated Linux sandboxes. Create one with create_sandbox (it returns an id), run \
shell commands in it with exec, and destroy it with destroy_sandbox when done. Each sandbox \
has its own filesystem; /workspace is the working directory."""

MAX_OUTPUT_CHARS = 100_000


def _text(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    cut = len(text) - MAX_OUTPUT_CHARS
    return text[:MAX_OUTPUT_CHARS] + f"\n[... {cut} more characters not shown]"


def _info(info: Any) -> dict[str, Any]:
    raw = dict(getattr(info, "raw", {}) or {})
    return raw or {"id": info.id, "status": info.status, "image": info.image}


class HutchTools:
    """The tool implementations; one instance per MCP server, sharing one SDK client."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    def sandbox(self, sandbox_id: str) -> AsyncSandbox:
        # NB: no GET first: the call that follows says "no such sandbox" itself, and an exec
        # round trip stays one request.
        return AsyncSandbox(sandbox_id, client=self.client)

    # -- always there -------------------------------------------------------------------

    async def create_sandbox(
        self,
        image: str = DEFAULTS.image,
        env: dict[str, str] | None = None,
        cpu: float = DEFAULTS.cpu,
        memory_mb: int = DEFAULTS.memory_mb,
        timeout: float | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Create a sandbox (an isolated Linux machine) and return its id and settings.

        Args:
            image: The image: "default" (Debian, Python, Node, git), "agents" (plus coding-agent
                CLIs) or any image on the server.
            env: Environment variables for every command in it.
            cpu: CPUs it may use.
            memory_mb: Memory limit in MiB.
            timeout: Seconds after which it is destroyed; null: until destroy_sandbox.
            labels: Labels to find it by.
        """
        sb = await AsyncSandbox.create(
            image=image,
            env=env,
            cpu=cpu,
            memory_mb=memory_mb,
            timeout=timeout,
            labels=labels,
            client=self.client,
        )
        info = await sb.info()
        return _text(_info(info))

    async def list_sandboxes(self, labels: dict[str, str] | None = None) -> str:
        """List the sandboxes (id, status, image), optionally only those with these labels."""
        infos = await AsyncSandbox.list(labels=labels, client=self.client)
        return _text([{"id": i.id, "status": i.status, "image": i.image} for i in infos])

    async def destroy_sandbox(self, sandbox_id: str) -> str:
        """Destroy a sandbox and everything in it."""
        await self.sandbox(sandbox_id).destroy()
        return _text({"destroyed": sandbox_id})

    async def exec(
        self,
        sandbox_id: str,
        command: str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: float | None = 120.0,
    ) -> str:
        """Run a shell command in a sandbox and return exit_code, stdout and stderr.

        Args:
            sandbox_id: The sandbox's id (from create_sandbox).
            command: A bash command line, e.g. "ls -la | head".
            cwd: Working directory (default /workspace).
            env: Extra environment variables for this command.
            user: User to run as (default the image's, usually root).
            timeout: Seconds after which the command is killed.
        """
        try:
            r = await self.sandbox(sandbox_id).exec(
                command, cwd=cwd, env=env, user=user, timeout=timeout
            )
        except HutchError as exc:
            result = getattr(exc, "result", None)
            if result is None:
                raise
            r = result
        return _text(
            {
                "exit_code": r.exit_code,
                "stdout": _clip(r.stdout),
                "stderr": _clip(r.stderr),
                "timed_out": r.timed_out,
            }
        )

    # -- lit up by the other features' SDK methods --------------------------------------

    async def start_process(
        self,
        sandbox_id: str,
        command: str,
        process_id: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Start a long-running command in the background; returns its process id.

        Follow its output with follow_process.
        """
        p = await self.sandbox(sandbox_id).start_process(
            command, process_id=process_id, cwd=cwd, env=env
        )
        return _text({"id": p.id, "pid": getattr(p, "pid", None), "status": p.status})

    async def follow_process(
        self,
        sandbox_id: str,
        process_id: str,
        since: int = 0,
        since_stderr: int = 0,
        wait_seconds: float = 5.0,
    ) -> str:
        """Output of a background process from byte offsets on, waiting up to wait_seconds for
        more (or until it ends). Pass the returned next_since/next_since_stderr to continue.
        """
        sb = self.sandbox(sandbox_id)
        p = await sb.get_process(process_id)
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        offsets = {"stdout": since, "stderr": since_stderr}
        wait = max(0.0, min(wait_seconds, 60.0))
        stream = p.stream_logs(since=since, since_stderr=since_stderr, follow=True, timeout=wait)
        try:
            async for ev in stream:
                channel = "stderr" if ev.type == "stderr" else "stdout"
                out[channel].append(ev.data)
                offsets[channel] = ev.offset + len(ev.data)
        finally:
            aclose = getattr(stream, "aclose", None)  # an async generator: stop its request
            if aclose is not None:
                await aclose()
        p = await sb.get_process(process_id)
        return _text(
            {
                "stdout": _clip(b"".join(out["stdout"]).decode("utf-8", "replace")),
                "stderr": _clip(b"".join(out["stderr"]).decode("utf-8", "replace")),
                "next_since": offsets["stdout"],
                "next_since_stderr": offsets["stderr"],
                "status": p.status,
                "exit_code": p.exit_code,
            }
        )

    async def kill_process(self, sandbox_id: str, process_id: str, signal: str = "SIGTERM") -> str:
        """Send a signal to a background process (and its children)."""
        await self.sandbox(sandbox_id).kill_process(process_id, signal)
        return _text({"killed": process_id, "signal": signal})

    async def read_file(self, sandbox_id: str, path: str) -> str:
        """Read a text file from a sandbox."""
        data = await self.sandbox(sandbox_id).read_file(path, text=True)
        return _clip(str(data))

    async def write_file(self, sandbox_id: str, path: str, content: str) -> str:
        """Write a text file in a sandbox (parent directories are created)."""
        await self.sandbox(sandbox_id).write_file(path, content)
        return _text({"written": path, "bytes": len(content.encode())})

    async def list_files(self, sandbox_id: str, path: str = ".", recursive: bool = False) -> str:
        """List a directory in a sandbox."""
        entries = await self.sandbox(sandbox_id).list_files(path, recursive=recursive)
        return _text([_entry(e) for e in entries])

    async def run_code(
        self,
        sandbox_id: str,
        code: str,
        language: str = "python",
        timeout: float | None = 120.0,
    ) -> builtins.list[TextContent | ImageContent]:
        """Run code in a stateful interpreter (Jupyter kernel); charts come back as images."""
        ex = await self.sandbox(sandbox_id).run_code(code, language=language, timeout=timeout)
        return _execution_content(ex)

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """Expose a port of a sandbox as a preview URL that a browser can open."""
        exposed = await self.sandbox(sandbox_id).expose_port(port)
        return _text({"port": port, "url": getattr(exposed, "url", str(exposed))})


def _entry(entry: Any) -> Any:
    if isinstance(entry, Mapping | str):
        return entry
    fields = ("name", "path", "type", "size", "mtime", "target")
    return {f: getattr(entry, f) for f in fields if hasattr(entry, f)}


def _execution_content(ex: Any) -> builtins.list[TextContent | ImageContent]:
    out: builtins.list[TextContent | ImageContent] = []
    logs = getattr(ex, "logs", None)
    stdout = "".join(getattr(logs, "stdout", []) or [])
    stderr = "".join(getattr(logs, "stderr", []) or [])
    if stdout:
        out.append(TextContent(type="text", text=_clip(stdout)))
    if stderr:
        out.append(TextContent(type="text", text="stderr:\n" + _clip(stderr)))
    for result in getattr(ex, "results", []) or []:
        for fmt, mime in (("png", "image/png"), ("jpeg", "image/jpeg")):
            data = getattr(result, fmt, None)
            if data:
                b64 = data if isinstance(data, str) else base64.b64encode(data).decode()
                out.append(ImageContent(type="image", data=b64, mime_type=mime))
        text = getattr(result, "text", None)
        if text:
            out.append(TextContent(type="text", text=_clip(str(text))))
    error = getattr(ex, "error", None)
    if error is not None:
        trace = getattr(error, "traceback", "")
        if isinstance(trace, list):
            trace = "\n".join(trace)
        message = f"{getattr(error, 'name', 'Error')}: {getattr(error, 'value', '')}\n{trace}"
        out.append(TextContent(type="text", text=_clip(message)))
    return out or [TextContent(type="text", text="(no output)")]


# The tools, each a method of HutchTools of the same name.
TOOLS: tuple[str, ...] = (
    "create_sandbox",
    "list_sandboxes",
    "destroy_sandbox",
    "exec",
    "start_process",
    "follow_process",
    "kill_process",
    "read_file",
    "write_file",
    "list_files",
    "run_code",
    "expose_port",
)


def available_tools() -> builtins.list[str]:
    """The names of the tools `hutch mcp` serves."""
    return list(TOOLS)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Hutch's errors reach the model as the tool's error text (with what to do)."""

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except HutchError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from None

    return call


def build_mcp_server(client: AsyncClient, *, name: str = "hutch") -> MCPServer:
    """An MCP server whose tools drive sandboxes on the Hutch server behind `client`."""
    server: MCPServer = MCPServer(name=name, instructions=INSTRUCTIONS, log_level="WARNING")
    tools = HutchTools(client)
    for tool_name in available_tools():
        server.add_tool(_guard(getattr(tools, tool_name)), name=tool_name, structured_output=False)
        _forbid_unknown_arguments(server, tool_name)
    return server


def _forbid_unknown_arguments(server: MCPServer, tool_name: str) -> None:
    # NB: the SDK's argument models ignore unknown fields; a misspelt argument would be
    # silently dropped and the model would never learn. Forbid them, in schema and check.
    tool = server._tool_manager.get_tool(tool_name)
    assert tool is not None
    model = tool.fn_metadata.arg_model
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    tool.parameters["additionalProperties"] = False
