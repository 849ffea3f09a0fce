"""The Hutch server: HTTP API, state, and sandbox lifecycle on one host."""

from hutch.server._app import create_app
from hutch.server._config import ServerConfig
from hutch.server._run import run

__all__ = ["ServerConfig", "create_app", "run"]
