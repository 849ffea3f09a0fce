"""HAProxy's runtime API (the admin unix socket): one command line per connection, and the
parsers of the few answers Hutch reads (pure)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

_SESSION_HEAD_RE = re.compile(r"^(0x[0-9a-f]+):", re.MULTILINE)
_SERVER_ADDR_RE = re.compile(r"^\s*server=sandbox \(id=\d+\) addr=([0-9a-f.:\[\]]+):(\d+)", re.M)
_TABLE_ROW_RE = re.compile(r"key=(\S+) .*?conn_cur=(\d+) http_req_cnt=(\d+)")


class AdminError(Exception):
    """HAProxy's admin socket refused a command or could not be reached."""


async def admin_command(socket_path: Path, command: str, wait: float = 5.0) -> str:
    """Send one line (commands joined by `;`) and return the whole answer."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(socket_path)), wait
        )
    except (OSError, TimeoutError) as exc:
        raise AdminError(f"haproxy admin socket {socket_path}: {exc}") from exc
    try:
        writer.write(command.encode() + b"\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), wait)
    except (OSError, TimeoutError) as exc:
        raise AdminError(f"haproxy admin command failed: {exc}") from exc
    finally:
        writer.close()
    return answer.decode(errors="replace")


def sessions_to(show_sess_all: str, address: str, port: int) -> list[str]:
    """The ids of the streams (in `show sess all`) whose sandbox side is `address:port`."""
    heads = list(_SESSION_HEAD_RE.finditer(show_sess_all))
    found = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(show_sess_all)
        server = _SERVER_ADDR_RE.search(show_sess_all, head.end(), end)
        if server and server.group(1).strip("[]") == address and int(server.group(2)) == port:
            found.append(head.group(1))
    return found


@dataclass(frozen=True, slots=True)
class Activity:
    """One sandbox's preview traffic so far, as HAProxy counts it."""

    requests: int
    open_connections: int


def parse_activity(show_table: str) -> dict[str, Activity]:
    """`show table preview_activity` -> sandbox id -> its counters."""
    out = {}
    for m in _TABLE_ROW_RE.finditer(show_table):
        out[m.group(1)] = Activity(int(m.group(3)), int(m.group(2)))
    return out
