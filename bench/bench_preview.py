"""Preview proxy figures: small responses through the preview URL vs the sandbox's address
directly (requests/s and p50 latency, wrk), and a 1 GB download through the proxy (curl).

Run as root after the default image is built:

    .venv/bin/python bench/bench_preview.py [--duration 5]

The sandbox runs three small-response servers, each answering a 2-byte body with keep-alive:
- a raw asyncio protocol answering "ok" (the proxy's worst case: the upstream costs almost
  nothing, so the proxy's own cost is the whole difference);
- node's `http` module (node is in the default image): a realistic app server;
- python's http.server (ThreadingHTTPServer, HTTP/1.1) with Nagle off and the head and body
  written in one send (the stock handler writes them apart, and delayed ACKs then put a
  ~40 ms floor under every request, which makes it useless as a baseline);
and `tests/support/wsecho.py` for the download. Every figure has its baseline (the same
request straight to the sandbox's veth address) in the same run, at -c1 and -c16; the load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

SMALL_SERVER = """
import asyncio
RESP = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nContent-Type: text/plain\\r\\n\\r\\nok"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        n = self.buf.count(b"\\r\\n\\r\\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\\r\\n\\r\\n") + 4:]
            self.t.write(RESP * n)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "0.0.0.0", 8001, backlog=1024)
    await s.serve_forever()
asyncio.run(main())
"""

NODE_SERVER = """
require('http').createServer((req, res) => {
  res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': 2});
  res.end('ok');
}).listen(8003, '0.0.0.0');
"""

PY_SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = -1  # head and body in one send (flushed after each request)
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer.request_queue_size = 1024
http.server.ThreadingHTTPServer(("0.0.0.0", 8004), H).serve_forever()
"""

WSECHO = (Path(__file__).resolve().parent.parent / "tests" / "support" / "wsecho.py").read_text()


def wrk(url: str, host: str | None, connections: int, duration: int) -> tuple[float, float, int]:
    """(requests/s, p50 latency in ms, requests)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert m, out
    p50 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, p50, n


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def curl_speed(url: str, host: str | None) -> float:
    """MB/s of a download to /dev/null."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", url]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(out) / 1e6


def wait_port(url: str, host: str | None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url]
        if host:
            argv[1:1] = ["-H", f"Host: {host}"]
        if subprocess.run(argv, capture_output=True, text=True).stdout == "200":
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gb", type=float, default=1.0)
    args = parser.parse_args()
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    srv.start()
    try:
        sb = Sandbox.create(base_url=srv.url, api_key=srv.api_key, cpu=2.0)
        sb.exec("cat > /tmp/small.py", stdin=SMALL_SERVER)
        sb.exec("cat > /tmp/node.js", stdin=NODE_SERVER)
        sb.exec("cat > /tmp/py.py", stdin=PY_SERVER)
        sb.exec("cat > /tmp/wsecho.py", stdin=WSECHO)
        sb.exec("nohup python3 /tmp/small.py >/dev/null 2>&1 &")
        sb.exec("nohup node /tmp/node.js >/dev/null 2>&1 &")
        sb.exec("nohup python3 /tmp/py.py >/dev/null 2>&1 &")
        sb.exec(
            "mkdir -p /tmp/site && nohup python3 /tmp/wsecho.py 8002 /tmp/site >/dev/null 2>&1 &"
        )
        address = sb.set_network("none")["address"]
        big_host = urlsplit(sb.expose_port(8002).url).netloc
        proxied = f"http://127.0.0.1:{srv.port}/"
        rows = []
        for label, port in (
            ("raw asyncio 'ok' (worst case)", 8001),
            ("node http, 2-byte body", 8003),
            ("python http.server, no Nagle", 8004),
        ):
            host = urlsplit(sb.expose_port(port).url).netloc
            direct = f"http://{address}:{port}/"
            wait_port(direct, None)
            wait_port(proxied, host)
            rows.append((label, direct, proxied, host))
        print(f"load average before: {load_average()}")
        print(
            f"small responses, wrk -t1, {args.duration}s per run, direct and preview runs "
            f"alternated {args.repeat} times, medians (the machine is shared: see the load):"
        )
        assert srv.proc is not None
        for label, d_url, p_url, host in rows:
            for c in (1, 16):
                d_runs, p_runs, cpu = [], [], []
                for _ in range(args.repeat):
                    d_runs.append(wrk(d_url, None, c, args.duration))
                    before = cpu_seconds(srv.proc.pid)
                    p_runs.append(wrk(p_url, host, c, args.duration))
                    cpu.append((cpu_seconds(srv.proc.pid) - before) / p_runs[-1][2] * 1e6)
                d_rps = statistics.median(r[0] for r in d_runs)
                p_rps = statistics.median(r[0] for r in p_runs)
                d_p50 = statistics.median(r[1] for r in d_runs)
                p_p50 = statistics.median(r[1] for r in p_runs)
                per_run = " ".join(
                    f"{p[0] / d[0]:.0%}" for d, p in zip(d_runs, p_runs, strict=True)
                )
                print(
                    f"  {label:<30} -c{c:<3} direct {d_rps:8.0f} req/s p50 {d_p50:6.3f} ms | "
                    f"preview {p_rps:8.0f} req/s p50 {p_p50:6.3f} ms | "
                    f"ratio {p_rps / d_rps:6.1%}  added p50 {p_p50 - d_p50:+.3f} ms | "
                    f"server CPU {statistics.median(cpu):5.1f} us/req  "
                    f"(ratios per run: {per_run})",
                    flush=True,
                )
        print(f"load average: {load_average()}")

        n = int(args.gb * (1 << 30))
        big = f"/big?n={n}"
        wait_port(f"http://{address}:8002/big?n=1", None)
        d = curl_speed(f"http://{address}:8002{big}", None)
        p = curl_speed(f"http://127.0.0.1:{srv.port}{big}", big_host)
        print(f"{args.gb:g} GB download (curl): direct {d:7.0f} MB/s | preview {p:7.0f} MB/s")
        print(f"load average after: {load_average()}")
        sb.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)


if __name__ == "__main__":
    main()
