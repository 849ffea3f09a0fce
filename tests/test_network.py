"""Sandbox networks and preview URLs, through a real server, real runc sandboxes and the proxy."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

SERVE = "nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 &"


@pytest.fixture(scope="module")
def web(server: ServerProcess) -> Iterator[Sandbox]:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
    sb.exec("mkdir -p /srv && echo hello-from-sandbox > /srv/index.html")
    sb.exec(f"cd /srv && {SERVE.format(port=8080)}")
    yield sb
    sb.destroy()


def _get(server: ServerProcess, url: str, **kw: object) -> httpx.Response:
    """GET a preview URL by connecting to the server itself with the URL's Host."""
    parts = urlsplit(url)
    host = parts.netloc
    return httpx.get(f"{server.url}{parts.path or '/'}", headers={"Host": host}, **kw)  # type: ignore[arg-type]


def _wait_ok(server: ServerProcess, url: str) -> httpx.Response:
    deadline = time.monotonic() + 20
    while True:
        r = _get(server, url)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_preview_url_serves_the_sandbox_port(server: ServerProcess, web: Sandbox) -> None:
    exposed = web.expose_port(8080)
    assert exposed.url.startswith("http://8080-" + web.id + "-")
    assert exposed.url.endswith(f".localhost:{server.preview_port}/")
    assert web.expose_port(8080).url == exposed.url  # twice: the same URL
    assert web.get_preview_url(8080) == exposed.url
    r = _wait_ok(server, exposed.url)
    assert r.status_code == 200 and r.text == "hello-from-sandbox\n"
    assert [p.port for p in web.get_exposed_ports()] == [8080]


def test_unknown_wrong_token_and_unexposed_get_the_same_404(
    server: ServerProcess, web: Sandbox
) -> None:
    url = web.expose_port(8080).url
    token = urlsplit(url).hostname.split(".")[0].rsplit("-", 1)[1]  # type: ignore[union-attr]
    wrong = url.replace(token, "0" * 32)
    unexposed = url.replace("8080-", "8081-", 1)
    unknown = url.replace(web.id, "sb-000000000000")
    # One body for all three: nothing tells a prober which part of the URL was wrong.
    answers = [_get(server, u) for u in (wrong, unexposed, unknown)]
    assert [r.status_code for r in answers] == [404, 404, 404]
    assert answers[0].content == answers[1].content == answers[2].content, answers
    assert answers[0].text.startswith("no such preview:"), answers[0].text
    assert _wait_ok(server, url).status_code == 200  # and the right URL does answer
    # A 404 leaves a kept-alive connection usable: the next request on it gets its own answer.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for target in (unexposed, url):
            host = urlsplit(target).netloc
            s.sendall(f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        replies = b""
        while b"hello-from-sandbox\n" not in replies:
            chunk = s.recv(65536)
            assert chunk, replies
            replies += chunk
    head, _, rest = replies.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), replies
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert rest[:length] == answers[0].content, replies
    second = rest[length:]  # the next response starts right after the 404's body, exactly
    assert re.match(rb"HTTP/1\.[01] 200 ", second), replies
    assert second.endswith(b"\r\n\r\nhello-from-sandbox\n"), replies


def test_unexpose_kills_the_url_at_once(server: ServerProcess, web: Sandbox) -> None:
    web.exec(SERVE.format(port=9090))
    url = web.expose_port(9090).url
    assert _wait_ok(server, url).status_code == 200
    web.unexpose_port(9090)
    assert _get(server, url).status_code == 404


def test_bad_ports_and_hosts(server: ServerProcess, web: Sandbox) -> None:
    for port in (0, 65536, -1):
        r = httpx.post(
            f"{server.url}/v1/sandboxes/{web.id}/ports",
            json={"port": port},
            headers={"Authorization": f"Bearer {server.api_key}"},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_port"
    for host in ("bad host!", "a..localhost", "-x.localhost"):
        assert _raw(server, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").startswith(b"HTTP/1.1 400")
    # `{port}-{id}.{domain}` is E2B's get_host shape (token in a header): well formed, so an
    # unknown sandbox there is the one 404 every wrong preview gets.
    unknown = _raw(server, "GET / HTTP/1.1\r\nHost: 8080-x.localhost\r\n\r\n")
    assert unknown.startswith(b"HTTP/1.1 404") and b"no such preview" in unknown


def _raw(server: ServerProcess, request: str) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(65536)


def test_smuggling_shapes_are_refused(server: ServerProcess, web: Sandbox) -> None:
    host = urlsplit(web.expose_port(8080).url).netloc
    cl_te = (
        f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert _raw(server, cl_te).startswith(b"HTTP/1.1 400")
    assert _raw(server, f"GET / HTTP/1.1\nHost: {host}\n\n").startswith(b"HTTP/1.1 400")
    absolute = f"GET http://other.localhost/ HTTP/1.1\r\nHost: {host}\r\n\r\n"
    assert _raw(server, absolute).startswith(b"HTTP/1.1 400")


def test_keep_alive_chunked_and_forwarded_headers(server: ServerProcess, web: Sandbox) -> None:
    app = (
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    protocol_version = 'HTTP/1.1'\n"
        "    def do_GET(self):\n"
        "        self.send_response(200)\n"
        "        self.send_header('Transfer-Encoding', 'chunked')\n"
        "        self.end_headers()\n"
        "        for k in ('X-Forwarded-For', 'X-Forwarded-Proto', 'X-Forwarded-Host'):\n"
        "            v = (k + '=' + str(self.headers.get(k)) + '\\n').encode()\n"
        "            self.wfile.write(b'%x\\r\\n%s\\r\\n' % (len(v), v))\n"
        "        self.wfile.write(b'0\\r\\n\\r\\n')\n"
        "    def log_message(self, *a): pass\n"
        "h.ThreadingHTTPServer(('0.0.0.0', 7000), H).serve_forever()\n"
    )
    web.write_file("/srv/app.py", app) if hasattr(web, "write_file") else web.exec(
        "cat > /srv/app.py", stdin=app
    )
    web.exec("nohup python3 /srv/app.py >/dev/null 2>&1 &")
    url = web.expose_port(7000).url
    host = urlsplit(url).netloc
    assert _wait_ok(server, url).status_code == 200
    with httpx.Client(base_url=server.url, headers={"Host": host}) as client:
        sockets = set()
        for _ in range(3):  # one connection, several requests
            r = client.get("/")
            assert r.status_code == 200
            # The client's own address and port: the same for each when the server keeps
            # the connection open.
            sockets.add(r.extensions["network_stream"].get_extra_info("client_addr"))
            assert "X-Forwarded-For=127.0.0.1" in r.text
            assert "X-Forwarded-Proto=http" in r.text
            assert f"X-Forwarded-Host={host}" in r.text
        assert len(sockets) == 1, sockets


# Every target at once (threads), answers printed in the order given: a host with many
# addresses (one per sandbox's veth) would otherwise take 1.5 s per dropped target in turn.
PROBE = (
    "import socket,sys,concurrent.futures as cf\n"
    "def probe(a):\n"
    "    h,p=a.rsplit(':',1)\n"
    "    s=socket.socket(); s.settimeout(1.5)\n"
    "    try:\n"
    "        s.connect((h,int(p))); return a+' OPEN'\n"
    "    except OSError as e: return a+' closed '+type(e).__name__\n"
    "    finally: s.close()\n"
    "with cf.ThreadPoolExecutor(64) as pool:\n"
    "    for line in pool.map(probe, sys.argv[1:]): print(line)\n"
)


def _host_addresses() -> list[str]:
    import subprocess

    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def _default_gateway(sb: Sandbox) -> str:
    """The host's end of the sandbox's veth, from the sandbox's routing table."""
    for line in sb.exec("cat /proc/net/route").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":  # the default route
            return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
    raise AssertionError("the sandbox has no default route")


@pytest.fixture()
def host_listener() -> Iterator[int]:
    """A TCP listener on every host address (0.0.0.0): what a sandbox must not reach."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_isolation_from_inside_a_sandbox(
    server: ServerProcess, web: Sandbox, host_listener: int
) -> None:
    a = Sandbox.create(base_url=server.url, api_key=server.api_key, network="internet")
    b = Sandbox.create(base_url=server.url, api_key=server.api_key, network="internet")
    try:
        for box in (a, b):
            box.exec(SERVE.format(port=8080))
            box.exec("cat > /tmp/probe.py", stdin=PROBE)
        ips = {box.id: box.set_network("internet")["address"] for box in (a, b)}
        gateways = {box.id: _default_gateway(box) for box in (a, b)}
        # Positive control: the listener answers on each sandbox's gateway address from the
        # host, and each sandbox's probe reports its own server OPEN.
        for gateway in gateways.values():
            socket.create_connection((gateway, host_listener), timeout=5).close()
        for box in (a, b):
            own = f"{ips[box.id]}:8080"
            wait_open = (
                f"for i in $(seq 50); do python3 /tmp/probe.py {own} | grep -q OPEN && break; "
                f"sleep 0.1; done; python3 /tmp/probe.py {own}"
            )
            assert box.exec(wait_open).stdout.split()[1] == "OPEN"
        # Both directions, both sandboxes on the internet policy: neither reaches the other,
        # the host on any of its addresses, nor the API.
        hosts = {*_host_addresses(), *gateways.values()}
        for attacker, victim in ((a, b), (b, a)):
            targets = [
                f"{h}:{port}" for h in sorted(hosts) for port in (host_listener, server.port)
            ]
            targets.append(f"{ips[victim.id]}:8080")
            r = attacker.exec("python3 /tmp/probe.py " + " ".join(targets), timeout=120)
            assert "OPEN" not in r.stdout, r.stdout
            assert r.stdout.count("closed") == len(targets), r.stdout
        # A raw socket cannot be opened.
        r = a.exec("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'")
        # (gVisor has no raw sockets for its sandboxes at all: EAFNOSUPPORT, not EPERM.)
        refusals = ("PermissionError", "Address family not supported")
        assert r.exit_code != 0 and any(e in r.stderr for e in refusals), r.stderr
        # network="none": nothing but loopback, not even the gateway.
        a.set_network("none")
        r = a.exec(f"python3 /tmp/probe.py 127.0.0.1:8080 {gateways[a.id]}:{host_listener}")
        assert r.stdout.split("\n")[0].endswith("OPEN") and "closed" in r.stdout, r.stdout
    finally:
        a.destroy()
        b.destroy()


ECHO_SERVER = (
    "import socketserver\n"
    "class H(socketserver.StreamRequestHandler):\n"
    "    def handle(self):\n"
    "        for line in self.rfile:\n"
    "            self.wfile.write(line)\n"
    "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
    "socketserver.ThreadingTCPServer(('0.0.0.0', 80), H).serve_forever()\n"
)


@pytest.fixture(scope="module")
def outside() -> Iterator[str]:
    """A stand-in for the internet: a netns of our own with an echo server at 198.51.100.2:80
    and 198.51.100.3:80 (TEST-NET-2), routed from the host; traffic never leaves this
    machine. The host has only a /32 there: a network the host is on is not "internet"."""
    import secrets
    import subprocess
    import sys

    tag = secrets.token_hex(3)
    ns, host_if = f"hutchtest-{tag}", f"hto{tag}"
    for cmd in (
        f"ip netns add {ns}",
        f"ip link add {host_if} type veth peer name eth0 netns {ns}",
        f"ip addr add 198.51.100.1/32 dev {host_if}",
        f"ip link set {host_if} up",
        f"ip route add 198.51.100.0/24 dev {host_if} src 198.51.100.1",
        f"ip -n {ns} addr add 198.51.100.2/24 dev eth0",
        f"ip -n {ns} addr add 198.51.100.3/24 dev eth0",
        f"ip -n {ns} link set eth0 up",
        f"ip -n {ns} link set lo up",
    ):
        subprocess.run(cmd.split(), check=True)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_SERVER])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("198.51.100.2", 80), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield "198.51.100.2"
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["ip", "netns", "delete", ns], check=False)


HOLD = (
    "import socket, os, time\n"
    "s = socket.create_connection(('198.51.100.2', 80), timeout=3)\n"
    "s.sendall(b'a\\n'); print('first', s.recv(10), flush=True)\n"
    "while not os.path.exists('/tmp/go'): time.sleep(0.05)\n"
    "s.settimeout(2); s.sendall(b'b\\n')\n"
    "try: print('second', s.recv(10), flush=True)\n"
    "except OSError: print('second blocked', flush=True)\n"
)


def test_egress_policy_changes_take_effect_at_once(server: ServerProcess, outside: str) -> None:
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
        sb.exec("cat > /tmp/probe.py", stdin=PROBE)

        def reachable() -> bool:
            out = sb.exec(f"python3 /tmp/probe.py {outside}:80").stdout
            return "OPEN" in out

        assert not reachable()  # the default: network="none"
        sb.set_network("internet")
        assert reachable()
        sb.set_network("internet", deny=["198.51.100.0/24"])
        assert not reachable()
        sb.set_network("none", allow=["198.51.100.2/32"])
        assert reachable()
        sb.set_network("none", allow=["198.51.100.0/24"], deny=["198.51.100.2"])
        assert not reachable()  # deny wins

        # An open connection is cut as soon as the policy says so.
        sb.set_network("internet")
        sb.exec("cat > /tmp/hold.py", stdin=HOLD)
        sb.exec("nohup python3 /tmp/hold.py > /tmp/hold.out 2>&1 &")
        deadline = time.monotonic() + 10
        while "first" not in sb.exec("cat /tmp/hold.out").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sb.set_network("none")
        sb.exec("touch /tmp/go")
        while "second" not in (out := sb.exec("cat /tmp/hold.out").stdout):
            assert time.monotonic() < deadline + 10
            time.sleep(0.2)
        assert "second blocked" in out, out
        assert sb.info().network == "none"


def test_policy_set_at_creation(server: ServerProcess, outside: str) -> None:
    from hutch import InvalidRequest

    # Both echo addresses answer the host: only the sandbox's policy can refuse one.
    for address in ("198.51.100.2", "198.51.100.3"):
        socket.create_connection((address, 80), timeout=5).close()
    with Sandbox.create(
        base_url=server.url,
        api_key=server.api_key,
        network="none",
        network_allow=["198.51.100.0/24"],
        network_deny=["198.51.100.3/32"],
    ) as sb:
        sb.exec("cat > /tmp/probe.py", stdin=PROBE)
        assert "OPEN" in sb.exec(f"python3 /tmp/probe.py {outside}:80").stdout
        assert "OPEN" not in sb.exec("python3 /tmp/probe.py 198.51.100.3:80").stdout
        policy = sb.get_network()
        assert policy["network"] == "none"
        assert policy["network_allow"] == ["198.51.100.0/24"]
        assert policy["network_deny"] == ["198.51.100.3/32"]

    for bad in (["10.0.0.0/33"], ["not-a-cidr"], ["::1/128"]):
        with pytest.raises(InvalidRequest) as info:
            Sandbox.create(base_url=server.url, api_key=server.api_key, network_allow=bad)
        assert info.value.code == "invalid_request"
        assert "network_allow" in str(info.value), info.value
    with pytest.raises(InvalidRequest) as info:
        Sandbox.create(base_url=server.url, api_key=server.api_key, network_deny=["1.2.3.4/x"])
    assert "network_deny" in str(info.value)


def _leftovers(address: str, home: Path) -> list[str]:
    import hashlib
    import ipaddress
    import subprocess

    host_ip = str(ipaddress.IPv4Address(address) - 1)
    found = []
    if (
        f" {host_ip}/31"
        in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    ):
        found.append("veth")
    index = (int(ipaddress.IPv4Address(host_ip)) & 0xFFFF) // 2
    # This server's own table only: tables left by killed runs of other homes hold chains of
    # the same names, for addresses long since given out again.
    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]
    rules = subprocess.run(
        ["nft", "list", "table", "inet", f"hutch_{tag}"], capture_output=True, text=True
    ).stdout
    if f"chain sb_{index} " in rules:
        found.append("nft chain")
    return found


def test_destroy_and_crash_sweep_remove_interfaces_and_rules(busybox_image: str) -> None:
    import sqlite3
    import tempfile

    from tests.conftest import _cleanup_home

    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-net-", dir="/var/tmp")))
    srv.start()
    try:
        opts = {"base_url": srv.url, "api_key": srv.api_key}
        sb = Sandbox.create(**opts)
        address = sb.set_network("none")["address"]
        assert _leftovers(address, srv.home) == ["veth", "nft chain"]
        sb.destroy()
        assert _leftovers(address, srv.home) == []

        # A crash that lost the record: the restarted server sweeps the sandbox's network.
        sb = Sandbox.create(**opts)
        address = sb.set_network("none")["address"]
        srv.kill9()
        with sqlite3.connect(srv.home / "hutch.db") as db:
            db.execute("DELETE FROM sandboxes WHERE id = ?", (sb.id,))
        srv.start()
        assert _leftovers(address, srv.home) == []
        assert not (srv.home / "net" / sb.id).exists()
    finally:
        srv.stop()
        _cleanup_home(srv)
