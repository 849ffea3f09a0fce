"""Chunked transfer coding: where a chunked body ends in a byte stream (pure)."""

from __future__ import annotations

import re

from hutch.proxy._errors import BadRequest

_CHUNK_SIZE_RE = re.compile(rb"^([0-9a-fA-F]{1,16})(?:[ \t]*;[^\r\n]*)?$")


class ChunkedFraming:
    """Finds where a chunked body ends in a byte stream, without copying it."""

    def __init__(self) -> None:
        self._remaining = 0
        self._state = "size"  # size | data | crlf | trailer | done

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, buf: bytearray | bytes, pos: int = 0) -> int:
        """Consume from `pos`; returns the index after the last byte of this body seen so far.

        Raises:
            BadRequest: malformed framing.
        """
        end = len(buf)
        while pos < end and self._state != "done":
            if self._state == "data":
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "crlf"
            elif self._state == "crlf":
                if end - pos < 2:
                    return pos
                if buf[pos : pos + 2] != b"\r\n":
                    raise BadRequest("chunk not followed by CRLF")
                pos += 2
                self._state = "size"
            else:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > 4096 or b"\n" in buf[pos:end]:
                        raise BadRequest("malformed chunk framing")
                    return pos
                line = bytes(buf[pos:nl])
                if b"\n" in line or b"\r" in line:
                    raise BadRequest("bare LF in chunk framing")
                pos = nl + 2
                if self._state == "trailer":
                    if not line:
                        self._state = "done"
                    continue
                m = _CHUNK_SIZE_RE.match(line)
                if m is None:
                    raise BadRequest("malformed chunk size")
                self._remaining = int(m.group(1), 16)
                self._state = "data" if self._remaining else "trailer"
        return pos
