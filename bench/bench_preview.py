"""Preview proxy figures: small responses through the preview URL vs the sandbox's address
directly (requests/s and p50 latency, wrk), and a 1 GB download through the proxy (curl).

Run as root after the default image is built:

    .venv/bin/python bench/bench_preview.py [--duration 5]

The sandbox runs a minimal keep-alive HTTP/1.1 server (a raw asyncio protocol answering "ok":
the proxy's worst case, as the upstream costs almost nothing) and `tests/support/wsecho.py`
(python's http.server, HTTP/1.1: a typical app) for a small static file and the download.
Every figure has its baseline (the same request straight to the sandbox's veth address) in
the same run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hutch import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402
from tests.conftest import _cleanup_home  # noqa: E402

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

WSECHO = (Path(__file__).resolve().parent.parent / "tests" / "support" / "wsecho.py").read_text()


def wrk(url: str, host: str | None, connections: int, duration: int) -> tuple[float, float]:
    """(requests/s, p50 latency in ms)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert m, out
    p50 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return rps, p50


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
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--gb", type=float, default=1.0)
    args = parser.parse_args()
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    srv.start()
    try:
        sb = Sandbox.create(base_url=srv.url, api_key=srv.api_key, cpu=2.0)
        sb.exec("cat > /tmp/small.py", stdin=SMALL_SERVER)
        sb.exec("cat > /tmp/wsecho.py", stdin=WSECHO)
        sb.exec("nohup python3 /tmp/small.py >/dev/null 2>&1 &")
        sb.exec(
            "mkdir -p /tmp/site && nohup python3 /tmp/wsecho.py 8002 /tmp/site >/dev/null 2>&1 &"
        )
        address = sb.set_network("none")["address"]
        small_host = urlsplit(sb.expose_port(8001).url).netloc
        big_host = urlsplit(sb.expose_port(8002).url).netloc
        direct, proxied = f"http://{address}:8001/", f"http://127.0.0.1:{srv.port}/"
        wait_port(direct, None)
        wait_port(proxied, small_host)

        sb.exec("echo ok > /tmp/site/small.txt")
        app_direct = f"http://{address}:8002/small.txt"
        app_proxied = f"http://127.0.0.1:{srv.port}/small.txt"
        wait_port(app_direct, None)
        rows = [
            ("raw asyncio 'ok' server", direct, proxied, small_host),
            ("python http.server, static file", app_direct, app_proxied, big_host),
        ]
        print(f"small responses, wrk -t1, {args.duration}s each, same run:")
        for label, d_url, p_url, host in rows:
            for c in (1, 16):
                d_rps, d_p50 = wrk(d_url, None, c, args.duration)
                p_rps, p_p50 = wrk(p_url, host, c, args.duration)
                print(
                    f"  {label:<33} -c{c:<3} direct {d_rps:8.0f} req/s p50 {d_p50:6.3f} ms | "
                    f"preview {p_rps:8.0f} req/s p50 {p_p50:6.3f} ms | "
                    f"ratio {p_rps / d_rps:6.1%}  added p50 {p_p50 - d_p50:+.3f} ms"
                )

        n = int(args.gb * (1 << 30))
        big = f"/big?n={n}"
        wait_port(f"http://{address}:8002/big?n=1", None)
        d = curl_speed(f"http://{address}:8002{big}", None)
        p = curl_speed(f"http://127.0.0.1:{srv.port}{big}", big_host)
        print(f"{args.gb:g} GB download (curl): direct {d:7.0f} MB/s | preview {p:7.0f} MB/s")
        sb.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)


if __name__ == "__main__":
    main()
