"""A fake of the Anthropic Messages API that speaks its real wire protocol (stdlib only).

Runs anywhere Python 3 does (inside a sandbox, too): ``python3 fake_anthropic.py PORT LOG``.
``POST /v1/messages`` answers like the real API, as SSE when the request says ``stream: true``:

- while no ``tool_result`` is in the conversation and the request offers a ``Write`` tool: one
  ``tool_use`` block calling ``Write`` to create ``$FAKE_TARGET`` (default
  /workspace/hello.txt) with ``$FAKE_CONTENT``;
- otherwise a short text answer (``end_turn``).

Every request (method, path, headers' names, the x-api-key, the body's model and stream flag)
is appended to LOG as one JSON line, so a test can check what the agent sent.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TARGET = os.environ.get("FAKE_TARGET", "/workspace/hello.txt")
CONTENT = os.environ.get("FAKE_CONTENT", "written by the agent through the fake model\n")
LOG = sys.argv[2] if len(sys.argv) > 2 else "/tmp/fake_anthropic.jsonl"


def has_tool_result(messages: list) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            return True
    return False


def tool_results(messages: list) -> list:
    found = []
    for message in messages:
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                found.append({"is_error": block.get("is_error"), "content": block.get("content")})
    return found


def reply_blocks(body: dict) -> tuple[list, str]:
    tools = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    if "Write" in tools and not has_tool_result(body.get("messages") or []):
        block = {
            "type": "tool_use",
            "id": "toolu_" + uuid.uuid4().hex[:24],
            "name": "Write",
            "input": {"file_path": TARGET, "content": CONTENT},
        }
        return [block], "tool_use"
    return [{"type": "text", "text": "Done: the file is written."}], "end_turn"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _record(self, body: dict) -> None:
        entry = {
            "method": self.command,
            "path": self.path,
            "x-api-key": self.headers.get("x-api-key"),
            "x-api-keys": self.headers.get_all("x-api-key") or [],
            "authorization": self.headers.get("authorization"),
            "model": body.get("model"),
            "stream": body.get("stream"),
            "tools": [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)],
            "tool_results": tool_results(body.get("messages") or []),
        }
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record({})
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "fake"}})

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = {}
        self._record(body)
        path = self.path.split("?", 1)[0]
        if path.endswith("/messages/count_tokens"):
            self._json(200, {"input_tokens": 42})
            return
        if not path.endswith("/v1/messages"):
            self._json(
                404, {"type": "error", "error": {"type": "not_found_error", "message": path}}
            )
            return
        blocks, stop = reply_blocks(body)
        model = body.get("model") or "claude-fake"
        message_id = "msg_" + uuid.uuid4().hex[:24]
        usage = {"input_tokens": 12, "output_tokens": 8}
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", "req_fake")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(kind: str, data: dict) -> None:
            self.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        start = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        }
        event("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": block["text"]},
                    },
                )
            else:
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": head},
                )
                raw = json.dumps(block["input"])
                for i in range(0, len(raw), 20):  # in pieces, as the real API streams it
                    event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": raw[i : i + 20]},
                        },
                    )
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 8},
            },
        )
        event("message_stop", {"type": "message_stop"})


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    # FAKE_HOST: another local address, for clients in other network namespaces.
    server = ThreadingHTTPServer((os.environ.get("FAKE_HOST", "127.0.0.1"), port), Handler)
    print(f"fake Anthropic API on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
