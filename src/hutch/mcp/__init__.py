"""`hutch mcp`: the Model Context Protocol server for Hutch sandboxes (stdio, streamable HTTP)."""

from hutch.mcp._serve import serve_http, serve_stdio
from hutch.mcp._server import available_tools, build_mcp_server

__all__ = ["available_tools", "build_mcp_server", "serve_http", "serve_stdio"]
