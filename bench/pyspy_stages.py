"""Split a py-spy raw profile of the server into the stages of a request, with CPU ms each.

    py-spy record -p SERVER_PID -d 10 -r 200 -f raw -o server.txt --nonblocking
    .venv/bin/python bench/pyspy_stages.py server.txt --ms-per-op 1.40

Each sample goes to the stage of its innermost frame that names one (a unix-socket write
under the agent client is "agent connection", a store read under `running()` is "store
reads"); `--ms-per-op` (the server's CPU per exec that `bench/profile_exec.py` printed for
the same run) turns shares into milliseconds. The stages are by module and function name,
so code that moves may need its pattern updated here.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

STAGES: list[tuple[str, str]] = [
    (
        "access + audit log",
        r"^(Logger\.|AccessLogMiddleware\._log|Handler\.|StreamHandler|JsonFormatter"
        r"|BaseRotatingHandler|RotatingFileHandler|AuditFileHandler|FileHandler|LogRecord)",
    ),
    (
        "store reads",
        r"^(SqliteStore\.|PostgresStore\.|_locked|SandboxRecord\.|point_read"
        r"|SandboxManager\.(running|fetch|get)\b)",
    ),
    ("auth: key, rate limit, team", r"^(require_key|authorize|KeyChecker|RateLimits|Teams\.)"),
    (
        "agent connection: frames, unix-socket writes",
        r"^(AgentConnection\.|AgentGateway\.|StreamWriter\.write|open_unix_connection"
        r"|AgentStream|encode_json_frame|parse_header|_checked_kind|FrameDecoder)",
    ),
    (
        "request body: read, JSON decode, validation",
        r"^(Request\.body|Request\.json|request_body_to_args|_parse \(hutch|_read_body"
        r"|BaseModel\.model_validate|TypeAdapter|ExecRequest|JSONDecoder|loads \(json"
        r"|_validate_value)",
    ),
    (
        "FastAPI routing + dependency solving",
        r"\((fastapi/(routing|dependencies|_compat)|starlette/(routing|_exception_handler"
        r"|middleware/exceptions)|fastapi/middleware)",
    ),
    (
        "response: streaming, relay of frames, anyio task group",
        r"^(StreamingResponse|FramesResponse|relay_frames|_relay_then_close|relay_on_own"
        r"|TaskGroup|TaskHandle|CancelScope|create_collapsing|gather_exec|Response\."
        r"|JSONResponse|ExecResult)|\(anyio/",
    ),
    ("socket writes to the client", r"^CoalescedWrites\._flush"),
    (
        "Hutch middlewares (storage guard, metrics, E2B front, body limit, JSON text, exec front)",
        r"^(StorageGuard|RequestMetricsMiddleware|E2bFrontDoor|BodyLimitMiddleware"
        r"|JsonTextMiddleware|AccessLogMiddleware|ExecFront|_is_json|_is_plain_json|_header"
        r"|loggable_path|_client_request_id)",
    ),
    ("event loop: epoll, callbacks, task switches (C)", r"^Runner\.run \("),
    (
        "uvicorn HTTP parsing, FastAPI/Starlette outer layers",
        r"^(?!Server\.run|asyncio_run).*\((uvicorn/|starlette/|fastapi/)",
    ),
]
REST = "the rest (other threads, unattributed)"


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in STAGES:
            if re.search(pattern, frame):
                return name
    return REST


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--ms-per-op", type=float, default=0.0)
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    print(f"| stage | share of samples | ms per op | ({total} samples)")
    print("|---|---|---|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / total:.0f}% | {args.ms_per_op * n / total:.2f} |")


if __name__ == "__main__":
    main()
