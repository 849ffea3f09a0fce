"""What the proxy refuses a request with, and the plain answer it sends."""

from __future__ import annotations

# The answer when nothing in the sandbox accepts on the port (both proxies give it).
UNREACHABLE_BODY = (
    b"the sandbox does not accept connections on this port: is the server "
    b"running, and listening on this port (127.0.0.1 or 0.0.0.0)? "
    b"See docs/troubleshooting.md\n"
)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _simple_response(status: int, body: bytes, *, close: bool = True) -> bytes:
    reason = {
        400: "Bad Request",
        404: "Not Found",
        431: "Request Header Fields Too Large",
        501: "Not Implemented",
        502: "Bad Gateway",
        505: "HTTP Version Not Supported",
    }.get(status, "Error")
    # NB: no empty header line when the connection stays open: an extra CRLF would shift the
    # body by two bytes and leave them in front of the next response on the connection.
    connection = "connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n{connection}\r\n"
    ).encode() + body
