"""The in-sandbox agent: PID 1 of every sandbox, serving the server over one unix socket.

It runs on the host's Python, bind-mounted into images that may have no Python or libc of
their own, so it imports only the standard library, ``hutch._wire`` and itself, and it stays
small: see ``_loop`` for why it has its own event loop instead of asyncio.
"""

AGENT_VERSION = "0.1.0"

__all__ = ["AGENT_VERSION"]
