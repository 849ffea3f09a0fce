"""The sync client's exec requests over its own HTTP/1.1 connections (sdk/_http1.py).

A scripted server on a loopback socket answers each request with the bytes a test gives it,
cut into the pieces the test chooses: what the client must get right is what any HTTP/1.1
server may send (chunks split anywhere, Content-Length, informational answers, a connection
closed while idle or after `Connection: close`).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpcore
import pytest

from hutch import Client, HutchConnectionError, SandboxNotFound
from hutch.sdk._http1 import Http1Pool


@dataclass
class Answer:
    data: bytes
    piece: int = 0  # send it in pieces of this many bytes (0: at once)
    close: bool = False  # close the connection after it


@dataclass
class ScriptedServer:
    answers: list[Answer]
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)
    ended: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        except OSError:
            pass  # the client reset the connection (it left mid-answer)
        finally:
            self.ended.release()  # after the close: the client can see it

    def _answer(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                if not self.answers:  # a silent server: it holds the connection open
                    while conn.recv(65536):
                        pass
                    return
                answer = self.answers.pop(0)
                step = answer.piece or len(answer.data) or 1
                for i in range(0, len(answer.data), step):
                    conn.sendall(answer.data[i : i + step])
                if answer.close:
                    return


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer([])
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server
    server.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
    server.listener.close()
    thread.join(10)


def _chunked(*pieces: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"


def _sized(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


def _streamed(client: Client, path: str = "/v1/x") -> bytes:
    with client.stream("POST", path, json={"command": "true"}) as chunks:
        return b"".join(chunks)


def test_bodies_cut_anywhere_arrive_whole_on_one_kept_alive_connection(
    scripted: ScriptedServer,
) -> None:
    scripted.answers += [
        Answer(_chunked(b"hello ", b"world" * 1000), piece=1),
        Answer(b"HTTP/1.1 100 Continue\r\n\r\n" + _sized(b"sized body"), piece=3),
        Answer(_chunked(b"x" * 70_000, b"y")),
        Answer(_sized(b"")),
    ]
    with Client(base_url=scripted.url + "/base", api_key="hk_k") as client:
        assert _streamed(client) == b"hello " + b"world" * 1000
        assert _streamed(client) == b"sized body"
        assert _streamed(client) == b"x" * 70_000 + b"y"
        assert _streamed(client) == b""
    assert scripted.accepted == 1
    head = scripted.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /base/v1/x HTTP/1.1"
    assert b"Authorization: Bearer hk_k" in head and b"Content-Length: 18" in head
    assert scripted.requests[0].endswith(b'{"command":"true"}')


def test_a_connection_the_server_closed_is_not_used_again(scripted: ScriptedServer) -> None:
    scripted.answers += [
        Answer(_chunked(b"one"), close=True),  # closed while idle
        Answer(_sized(b"two", extra=b"connection: close\r\n")),  # closed by its header
        Answer(_chunked(b"three", b"cut"), piece=4),  # the caller leaves mid-body
        Answer(_chunked(b"four")),
    ]
    with Client(base_url=scripted.url, api_key="hk_k") as client:
        assert _streamed(client) == b"one"
        assert scripted.ended.acquire(timeout=10)
        assert _streamed(client) == b"two"
        with client.stream("POST", "/v1/x", json={}) as chunks:
            assert b"three".startswith(next(iter(chunks)))
        assert _streamed(client) == b"four"
    assert scripted.accepted == 4


def test_error_answers_raise_the_api_error_and_keep_the_connection(
    scripted: ScriptedServer,
) -> None:
    error = b'{"error":{"code":"sandbox_not_found","message":"no sandbox sb-x"}}'
    scripted.answers += [Answer(_sized(error, "404 Not Found")), Answer(_chunked(b"ok"))]
    with Client(base_url=scripted.url, api_key="hk_k") as client:
        with pytest.raises(SandboxNotFound, match="sb-x"):
            _streamed(client)
        assert _streamed(client) == b"ok"
    assert scripted.accepted == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"",
    ],
    ids=["short", "bad-chunk", "coding", "not-http", "nothing"],
)
def test_broken_answers_are_connection_errors(scripted: ScriptedServer, answer: bytes) -> None:
    scripted.answers.append(Answer(answer, close=True))
    with Client(base_url=scripted.url, api_key="hk_k") as client:
        with pytest.raises(HutchConnectionError, match="failed"):
            _streamed(client)


def test_unsafe_requests_are_refused_before_they_are_sent(scripted: ScriptedServer) -> None:
    with Client(base_url=scripted.url, api_key="hk_k") as client:
        with pytest.raises(HutchConnectionError):
            _streamed(client, "/v1/x HTTP/1.1\r\nX-Injected: 1\r\n\r\n")
    assert scripted.requests == []


def test_a_silent_server_is_a_read_timeout(scripted: ScriptedServer) -> None:
    # Nothing scripted: the server reads the request and never answers.
    pool = Http1Pool(
        "127.0.0.1",
        int(scripted.url.rsplit(":", 1)[1]),
        max_connections=2,
        max_keepalive=2,
        keepalive_expiry=5,
    )
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(httpcore.ReadTimeout):
        pool.send(head, b"", connect=5, write=5, read=0.2)
    pool.close()
    with pytest.raises(httpcore.ConnectError, match="closed"):
        pool.send(head, b"", connect=5, write=5, read=0.2)
