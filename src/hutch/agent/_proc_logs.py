"""A background process's kept output on disk: one ``ChannelLog`` per channel, as segment
files with absolute byte offsets, and ``LogFollower``, what a live reader of them implements
(the logs stream, _proc_log_stream.py). The process that writes them is in _bgprocs.py.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class LogFollower(Protocol):
        """Told of each piece of output as it is kept, and once the logs are final."""

        def on_output(self, channel: int, offset: int, data: bytes) -> None: ...
        def on_done(self) -> None: ...


class ChannelLog:
    """One channel's kept output: segment files holding absolute offsets ``[start, end)``."""

    __slots__ = ("_dir", "_name", "_segment_size", "_segments", "end", "write_errors")

    def __init__(self, directory: str, name: str, segment_size: int) -> None:
        self._dir = directory
        self._name = name
        self._segment_size = segment_size
        self._segments: list[list[int]] = []  # [base offset, fd, size, number]
        self.end = 0
        self.write_errors = 0

    @property
    def start(self) -> int:
        return self._segments[0][0] if self._segments else self.end

    def _new_segment(self) -> list[int]:
        number = self._segments[-1][3] + 1 if self._segments else 0
        path = f"{self._dir}/{self._name}.{number}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        segment = [self.end, fd, 0, number]
        self._segments.append(segment)
        return segment

    @property
    def kept(self) -> int:
        return sum(segment[2] for segment in self._segments)

    def drop_oldest(self) -> bool:
        """Delete the oldest segment, unless it is the one being written."""
        if len(self._segments) < 2:
            return False
        _, old_fd, _, old_number = self._segments.pop(0)
        os.close(old_fd)
        try:
            os.unlink(f"{self._dir}/{self._name}.{old_number}")
        except OSError:
            pass
        return True

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # Never more than the room left in a segment, so that dropping whole old
            # segments keeps the process's logs within their limit.
            segment = self._segments[-1] if self._segments else None
            if (
                segment is None
                or segment[2] >= self._segment_size
                or segment[0] + segment[2] != self.end
            ):
                try:
                    segment = self._new_segment()
                except OSError:
                    segment = None
            piece = view[: self._segment_size - segment[2]] if segment else view
            try:
                if segment is None:
                    raise OSError
                n = os.pwrite(segment[1], piece, segment[2])
                segment[2] += n
            except OSError:
                # Disk full or over quota: these bytes are lost. Offsets still advance, so
                # readers see a gap (the next segment starts past it), never shifted bytes.
                self.write_errors += 1
                n = len(piece)
            self.end += n
            view = view[n:]

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """Up to ``limit`` bytes from ``offset`` (moved forward past what is no longer kept)."""
        for base, fd, size, _ in self._segments:
            if offset < base:
                offset = base
            if offset < base + size:
                return offset, os.pread(fd, min(limit, base + size - offset), offset - base)
        return max(offset, self.end), b""

    def close(self) -> None:
        for segment in self._segments:
            os.close(segment[1])
        self._segments = []
