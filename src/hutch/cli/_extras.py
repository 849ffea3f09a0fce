"""What `pip install hutch` leaves out: the server's packages, and the message that says so.

The base install is the SDK and the CLI's client commands. `hutch serve`, `hutch image build`
on this host and `hutch mcp` import the server's packages, which come with `hutch[server]`.
"""

from __future__ import annotations

# Top-level modules of the `server` extra's packages (pyproject.toml) and of what they pull in.
SERVER_MODULES = frozenset(
    {
        "cryptography",
        "fastapi",
        "mcp",
        "psycopg",
        "psycopg_pool",
        "pydantic",
        "pydantic_core",
        "starlette",
        "uvicorn",
    }
)
INSTALL_SERVER = "pip install 'hutch[server]'"


def missing_server_module(exc: ModuleNotFoundError) -> str | None:
    """The server package `exc` says is missing, or None if it is about another module."""
    top = (exc.name or "").partition(".")[0]
    return top if top in SERVER_MODULES else None


def install_server_message(command: str, module: str) -> str:
    """What to tell a user whose `hutch COMMAND` needs the server extra."""
    return (
        f"`hutch {command}` runs server-side code, which needs the {module!r} package: "
        f"this is the client-only install of Hutch; install the server with {INSTALL_SERVER}"
    )
