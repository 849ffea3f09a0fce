"""Preview proxy figures: small responses through the preview URL vs the sandbox's address
directly (requests/s and p50 latency, wrk), and a 1 GB download through the proxy (curl).

Each figure is measured three ways in the same run: straight to the sandbox's veth address
(the baseline), through the Python proxy on the API's port, and through the native proxy
(HAProxy) on the port the preview URL names. Run as root after the default image is built:

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

from bench._stats import loadavg, report
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


HTTP10_PORT = 8005  # `python3 -m http.server`: HTTP/1.0, closes after every response


def preview_base(preview_url: str) -> str:
    """Where to send a preview request with its Host: the port the URL names (the native
    proxy's when it runs; else the API's own, where the Python proxy answers)."""
    return f"http://127.0.0.1:{urlsplit(preview_url).port}/"


def route_change_figure(sb: Sandbox, port: int, n: int) -> str:
    """Expose a port and GET it through the native proxy at once, `n` times: the time from
    the expose call to the answer, and how many first requests already got the sandbox."""
    import httpx

    times, hits = [], 0
    for _ in range(n):
        sb.unexpose_port(port)
        started = time.perf_counter()
        url = sb.expose_port(port).url
        parts = urlsplit(url)
        r = httpx.get(preview_base(url), headers={"Host": parts.netloc})
        times.append(time.perf_counter() - started)
        hits += r.status_code == 200
    return report("expose -> first answer via the preview URL", times) + f"  ({hits}/{n} 200)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gb", type=float, default=1.0)
    args = parser.parse_args()
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    srv.start(timeout=180)
    try:
        sb = Sandbox.create(base_url=srv.url, api_key=srv.api_key, cpu=2.0)
        sb.exec("cat > /tmp/small.py", stdin=SMALL_SERVER)
        sb.exec("cat > /tmp/node.js", stdin=NODE_SERVER)
        sb.exec("cat > /tmp/py.py", stdin=PY_SERVER)
        sb.exec("cat > /tmp/wsecho.py", stdin=WSECHO)
        sb.exec("nohup python3 /tmp/small.py >/dev/null 2>&1 &")
        sb.exec("nohup node /tmp/node.js >/dev/null 2>&1 &")
        sb.exec("nohup python3 /tmp/py.py >/dev/null 2>&1 &")
        sb.exec(f"cd /tmp && nohup python3 -m http.server {HTTP10_PORT} >/dev/null 2>&1 &")
        sb.exec(
            "mkdir -p /tmp/site && nohup python3 /tmp/wsecho.py 8002 /tmp/site >/dev/null 2>&1 &"
        )
        address = sb.set_network("none")["address"]
        big_url = sb.expose_port(8002).url
        big_host = urlsplit(big_url).netloc
        # Both proxies in the same run: the Python one on the API's port (what a miss of the
        # native one falls back to), the native one on the port the preview URL names.
        python_base = f"http://127.0.0.1:{srv.port}/"
        rows = []
        for label, port, conns in (
            ("raw asyncio 'ok' (worst case)", 8001, (1, 16)),
            ("node http, 2-byte body", 8003, (1, 16)),
            ("python http.server, no Nagle", 8004, (1, 16)),
            ("http.server HTTP/1.0 (close)", HTTP10_PORT, (1,)),
        ):
            url = sb.expose_port(port).url
            host = urlsplit(url).netloc
            direct = f"http://{address}:{port}/"
            native_base = preview_base(url)
            wait_port(direct, None)
            wait_port(python_base, host)
            wait_port(native_base, host)
            rows.append((label, conns, direct, python_base, native_base, host))
        print(f"load average before: {loadavg()}")
        print(
            f"small responses, wrk -t1, {args.duration}s per run, direct / python proxy / "
            f"native proxy runs alternated {args.repeat} times, medians:"
        )
        for label, conns, d_url, py_url, nat_url, host in rows:
            for c in conns:
                runs: dict[str, list[tuple[float, float, int]]] = {"d": [], "py": [], "nat": []}
                for _ in range(args.repeat):
                    runs["d"].append(wrk(d_url, None, c, args.duration))
                    runs["py"].append(wrk(py_url, host, c, args.duration))
                    runs["nat"].append(wrk(nat_url, host, c, args.duration))
                rps = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
                p50 = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
                print(
                    f"  {label:<30} -c{c:<3} direct {rps['d']:8.0f} req/s p50 {p50['d']:6.3f} ms"
                    f" | python {rps['py']:8.0f} ({rps['py'] / rps['d']:5.1%}) p50 "
                    f"{p50['py']:6.3f} ms | native {rps['nat']:8.0f} "
                    f"({rps['nat'] / rps['d']:5.1%}) p50 {p50['nat']:6.3f} ms",
                    flush=True,
                )
        print(f"load average: {loadavg()}")

        print(route_change_figure(sb, 8001, 40))

        n = int(args.gb * (1 << 30))
        big = f"big?n={n}"
        wait_port(f"http://{address}:8002/big?n=1", None)
        d = curl_speed(f"http://{address}:8002/{big}", None)
        py = curl_speed(python_base + big, big_host)
        nat = curl_speed(preview_base(big_url) + big, big_host)
        print(
            f"{args.gb:g} GB download (curl): direct {d:7.0f} MB/s | python {py:7.0f} MB/s "
            f"({py / d:.0%}) | native {nat:7.0f} MB/s ({nat / d:.0%})"
        )
        print(f"load average after: {loadavg()}")
        sb.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)


if __name__ == "__main__":
    main()
