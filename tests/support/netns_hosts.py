"""Test hosts on addresses of our choosing, in a network namespace the test makes itself.

One netns, one veth to the host; inside, every address given, an HTTP server on port 80 of
all of them and a DNS stub (UDP port 53 of one) that answers every A question with `dns_answer`.
The host routes each address's /24 into the veth and has only a /32 of its own on it (unless
`host_network` is given: then the host side is on that /24 too, as a LAN would be). Nothing
is routed anywhere else: no packet of these tests leaves the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

SERVERS = r"""
import http.server, socket, socketserver, struct, sys, threading
answer = socket.inet_aton(sys.argv[1])

class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + self.server.server_address[0] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass

class Dns(socketserver.BaseRequestHandler):
    def handle(self):
        query, sock = self.request
        # The question as asked, one A record for it (name compression: pointer to 12).
        end = 12
        while query[end]:
            end += query[end] + 1
        question = query[12:end + 5]
        head = query[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0)
        rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + answer
        sock.sendto(head + question + rr, self.client_address)

socketserver.ThreadingUDPServer.allow_reuse_address = True
# Bound to its own address: a reply from another one is not taken by the resolver.
dns = socketserver.ThreadingUDPServer((sys.argv[2], 53), Dns)
threading.Thread(target=dns.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Web).serve_forever()
"""


def _sh(command: str) -> None:
    subprocess.run(command.split(), check=True, capture_output=True)


@contextlib.contextmanager
def hosts_in_netns(
    addresses: Sequence[str],
    *,
    dns_answer: str,
    dns_address: str | None = None,
    host_network: str | None = None,
) -> Iterator[str]:
    """Start the hosts; yields the host-side interface name. The first address's /24 holds
    the host side's own address (.1); the DNS stub listens on `dns_address` (default: the
    first address)."""
    tag = secrets.token_hex(3)
    ns, host_if = f"hutchpub-{tag}", f"htp{tag}"
    nets = {ipaddress.IPv4Network(f"{a}/24", strict=False) for a in addresses}
    first = ipaddress.IPv4Network(f"{addresses[0]}/24", strict=False)
    gateway = str(first.network_address + 1)
    setup = [
        f"ip netns add {ns}",
        f"ip link add {host_if} type veth peer name eth0 netns {ns}",
        f"ip addr add {gateway}/32 dev {host_if}",
        f"ip link set {host_if} up",
        f"ip -n {ns} link set lo up",
        f"ip -n {ns} link set eth0 up",
    ]
    if host_network is not None:
        setup.append(f"ip addr add {host_network} dev {host_if}")
    setup += [f"ip -n {ns} addr add {a}/24 dev eth0" for a in addresses]
    setup.append(f"ip -n {ns} route add default via {gateway}")
    setup += [
        f"ip route replace {net} dev {host_if} src {gateway}"
        for net in sorted(nets, key=str)
        if host_network is None or net != ipaddress.IPv4Network(host_network, strict=False)
    ]
    proc: subprocess.Popen[bytes] | None = None
    try:
        for command in setup:
            _sh(command)
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-c",
                SERVERS,
                dns_answer,
                dns_address or addresses[0],
            ]
        )
        deadline = time.monotonic() + 10
        for address in addresses:
            while True:
                try:
                    socket.create_connection((address, 80), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
        yield host_if
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
