"""The process_logs stream: replays a background process's kept output from the asked offsets,
then follows it live (the process and its table are in _bgprocs.py, the log files in
_proc_logs.py).
"""

from __future__ import annotations

from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame

from ._bgprocs import table_of
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_calls import ProcessResult

    from ._server import Agent, Connection

REPLAY_CHUNK = 1024 * 1024


class LogStreamOp:
    """Replays a process's kept output from the asked offsets, then follows it live; ends with
    a RESULT holding the process's info once its logs are final (or at once without follow).

    Reads from the log files, not from memory: a slow reader costs disk it already had, and
    the connection's write buffer bounds what is in flight.
    """

    def __init__(
        self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]
    ) -> None:
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self._proc = table_of(agent).get(request.get("id"))
        self._offsets: dict[int, int] = {}
        for channel, field in (
            (Channel.STDOUT, "stdout_offset"),
            (Channel.STDERR, "stderr_offset"),
        ):
            value = request.get(field, 0)
            if value is None:
                value = 0
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(field, "must be a byte offset >= 0")
            self._offsets[channel] = value
        follow = request.get("follow", True)
        data = request.get("data", True)
        if not isinstance(follow, bool) or not isinstance(data, bool):
            raise InvalidRequest("follow", "follow and data must be true or false")
        self._follow = follow
        self._data = data
        self._paused = False
        self._finished = False

    def start(self) -> None:
        proc = self._proc
        event: dict[str, Any] = {"event": "logs", "process": proc.info()}
        for channel, name in ((Channel.STDOUT, "stdout"), (Channel.STDERR, "stderr")):
            start = proc.logs[channel].start
            if self._data and self._offsets[channel] < start:
                event[f"{name}_skipped"] = [self._offsets[channel], start]
        self._conn.send(encode_json_frame(Kind.EVENT, self._stream, event))
        if not self._data:
            self._offsets = {c: proc.logs[c].end for c in proc.logs}
        proc.followers.add(self)
        self._paused = self._conn.output_paused
        self._pump()

    def _pump(self) -> None:
        proc = self._proc
        for channel, log in proc.logs.items():
            while not self._paused and self._offsets[channel] < log.end:
                offset, data = log.read(self._offsets[channel], REPLAY_CHUNK)
                if not data:
                    self._offsets[channel] = log.end  # lost to a write error: nothing to send
                    break
                self._send(channel, offset, data)
                if self._conn.output_paused:
                    self._paused = True
        if not self._paused and (proc.done or not self._follow):
            self._finish()

    def _send(self, channel: int, offset: int, data: bytes) -> None:
        self._offsets[channel] = offset + len(data)
        self._conn.send(encode_frame(Kind.DATA, self._stream, data, channel, offset))

    def on_output(self, channel: int, offset: int, data: bytes) -> None:
        if self._finished:
            return
        if not self._data:
            self._offsets[channel] = offset + len(data)
            return
        if self._paused:
            return  # read back from the file on resume
        if self._offsets[channel] == offset:  # caught up: no need to go through the file
            self._send(channel, offset, data)
            if self._conn.output_paused:
                self._paused = True
        else:
            self._pump()

    def on_done(self) -> None:
        if not self._paused:
            self._pump()

    def pause_output(self) -> None:
        self._paused = True

    def resume_output(self) -> None:
        if self._paused and not self._finished:
            self._paused = False
            self._pump()

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.CANCEL and not self._finished:
            self._finish()

    def cancel(self) -> None:
        if not self._finished:
            self._finish()

    def terminate(self, sig: int) -> None:
        pass

    def connection_lost(self) -> None:
        self._finished = True
        self._proc.followers.discard(self)

    def _finish(self) -> None:
        self._finished = True
        self._proc.followers.discard(self)
        for channel in self._proc.logs:
            self._conn.send(
                encode_frame(Kind.EOF, self._stream, b"", channel, self._offsets[channel])
            )
        self.send_result({"ok": True, "process": self._proc.info()})

    def send_result(self, result: ProcessResult) -> None:
        self._conn.send(encode_json_frame(Kind.RESULT, self._stream, dict(result)))
        self._conn.stream_finished(self._stream, self)


def open_logs(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> LogStreamOp:
    return LogStreamOp(agent, conn, stream, request)
