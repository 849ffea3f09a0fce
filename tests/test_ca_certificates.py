"""Custom CAs (issue 19, item 4): `Sandbox.create(ca_certificates=[pem])` and the server's
`HUTCH_CA_CERTIFICATES` make curl, Python and Node in the sandbox trust a CA that the image
does not; the shared image is not touched; anything but a certificate is refused.

The TLS server runs inside the sandbox itself, on its loopback, with a certificate a CA of
the test's own signed: no traffic leaves the sandbox.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch import InvalidRequest, Sandbox
from hutch.runtime import ImageStore
from hutch.runtime.container._trust import install, split_pem
from hutch.server._ca_certificates import parse_ca_certificates
from tests._server import HUTCH_BIN, SHARED_IMAGES, ServerProcess
from tests.support.authority import Authority

HTTPS_SERVER = (
    "import http.server, ssl\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '7')\n"
    "        self.end_headers(); self.wfile.write(b'trusted')\n"
    "    def log_message(self, *a): pass\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain('/tmp/tls/cert.pem', '/tmp/tls/key.pem')\n"
    "s = http.server.ThreadingHTTPServer(('127.0.0.1', 8443), H)\n"
    "s.socket = ctx.wrap_socket(s.socket, server_side=True)\n"
    "s.serve_forever()\n"
)
URL = "https://localhost:8443/"
CLIENTS = {
    "curl": f"curl -sS --max-time 5 {URL}",
    "python": (
        f"python3 -c \"import urllib.request as u; print(u.urlopen('{URL}').read().decode())\""
    ),
    "requests-style": (
        'python3 -c "import os, ssl, urllib.request as u; '
        "c = ssl.create_default_context(cafile=os.environ['REQUESTS_CA_BUNDLE']); "
        f"print(u.urlopen('{URL}', context=c).read().decode())\""
    ),
    "node": (
        "node --dns-result-order=ipv4first -e \"require('https').get('"
        + URL
        + "', r => r.on('data', d => "
        "process.stdout.write(d))).on('error', e => { console.error(e.code); process.exit(1) })\""
    ),
}


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Path, Path]:
    ca = Authority("hutch-sandbox-test-ca")
    cert, key = ca.issue(tmp_path_factory.mktemp("tls"), "localhost")
    return ca, cert, key


def _serve_tls(sb: Sandbox, cert: Path, key: Path) -> None:
    sb.exec("mkdir -p /tmp/tls")
    sb.write_file("/tmp/tls/cert.pem", cert.read_bytes())
    sb.write_file("/tmp/tls/key.pem", key.read_bytes())
    sb.write_file("/tmp/tls/server.py", HTTPS_SERVER)
    sb.exec("nohup python3 /tmp/tls/server.py >/tmp/tls/log 2>&1 &")
    r = sb.exec(
        "for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8443) 2>/dev/null && exit 0; "
        "sleep 0.05; done; exit 1",
        timeout=30,
    )
    assert r.exit_code == 0, sb.exec("cat /tmp/tls/log").stdout


def _results(sb: Sandbox) -> dict[str, str]:
    out = {}
    for name, command in CLIENTS.items():
        r = sb.exec(command, timeout=30)
        out[name] = r.stdout.strip() if r.exit_code == 0 else f"failed: {r.stderr.strip()[-200:]}"
    return out


# -- unit -------------------------------------------------------------------------------------


def test_parse_accepts_certificates_and_refuses_the_rest(
    authority: tuple[Authority, Path, Path],
) -> None:
    ca, cert, key = authority
    pem = ca.pem().decode()
    assert parse_ca_certificates([pem, pem]) == (split_pem(pem)[0],)
    # The leaf's chain file holds two certificates: both taken, in order.
    assert len(parse_ca_certificates([cert.read_text()])) == 2
    for bad, says in (
        (key.read_text(), "PRIVATE KEY"),
        ("hello", "is not PEM"),
        (pem.replace(pem.splitlines()[3], "A" * 64), "not a valid X.509"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_ca_certificates([bad])


def test_install_replaces_a_symlinked_bundle_and_never_writes_the_host(tmp_path: Path) -> None:
    rootfs, outside = tmp_path / "rootfs", tmp_path / "host-file"
    outside.write_text("host's own\n")
    (rootfs / "etc/ssl/certs").mkdir(parents=True)
    # An image whose bundle is a symlink to a host path: it is resolved inside the rootfs
    # (where it does not exist) and replaced; the host file stays as it was.
    (rootfs / "etc/ssl/certs/ca-certificates.crt").symlink_to(outside)
    (rootfs / "usr/local/share/ca-certificates").mkdir(parents=True)
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    install(rootfs, [pem], os.getuid())
    assert outside.read_text() == "host's own\n"
    bundle = rootfs / "etc/ssl/certs/ca-certificates.crt"
    assert not bundle.is_symlink() and bundle.read_text() == pem
    assert [p.read_text() for p in (rootfs / "usr/local/share/ca-certificates").iterdir()] == [pem]
    # A second run (a restart) leaves a bundle that has them alone.
    bundle.write_text("image\n" + pem + "the sandbox's own\n")
    install(rootfs, [pem], os.getuid())
    assert bundle.read_text() == "image\n" + pem + "the sandbox's own\n"
    # A symlinked directory on the way stays inside the rootfs too: /etc/ssl -> far above
    # is the sandbox's own / (as the sandbox sees it), never the host's.
    bare = tmp_path / "bare"
    (bare / "etc").mkdir(parents=True)
    (bare / "etc/ssl").symlink_to("../" * 20)
    install(bare, [pem], os.getuid())
    assert (bare / "certs/ca-certificates.crt").read_text() == pem
    assert not Path("/certs").exists()


# -- sandboxes --------------------------------------------------------------------------------


@pytest.mark.sandbox
def test_a_sandboxs_own_ca_is_trusted_by_curl_python_and_node(
    server: ServerProcess, authority: tuple[Authority, Path, Path]
) -> None:
    ca, cert, key = authority
    opts = {"base_url": server.url, "api_key": server.api_key}
    with (
        Sandbox.create(**opts) as plain,
        Sandbox.create(ca_certificates=[ca.pem().decode()], **opts) as sb,
    ):
        for box in (plain, sb):
            _serve_tls(box, cert, key)
        # Without the CA: every client refuses the certificate (the test can fail).
        assert all(v.startswith("failed") for v in _results(plain).values()), _results(plain)
        assert _results(sb) == dict.fromkeys(CLIENTS, "trusted")
        env = sb.exec(
            "echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE $CURL_CA_BUNDLE $PIP_CERT $NODE_EXTRA_CA_CERTS"
        )
        assert env.stdout.split() == ["/etc/ssl/certs/ca-certificates.crt"] * 5
        assert plain.exec("echo ${SSL_CERT_FILE:-unset}").stdout == "unset\n"
        # The image's own roots are still there (the CA is appended, not the bundle replaced).
        count = sb.exec("grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt").stdout
        assert int(count) > 100
        # A stop and start keeps it; the shared image never had it.
        sb.stop()
        sb.start()
        _serve_tls(sb, cert, key)
        assert _results(sb)["curl"] == "trusted"
    shared = ImageStore(SHARED_IMAGES).get("default").rootfs / "etc/ssl/certs/ca-certificates.crt"
    assert split_pem(ca.pem().decode())[0] not in shared.read_text()


@pytest.mark.sandbox
def test_bad_certificates_are_refused_with_their_code(
    server: ServerProcess, authority: tuple[Authority, Path, Path]
) -> None:
    _, _, key = authority
    for bad in (["not a pem"], [key.read_text()]):
        with pytest.raises(InvalidRequest) as info:
            Sandbox.create(base_url=server.url, api_key=server.api_key, ca_certificates=bad)
        assert info.value.code == "invalid_ca_certificate"
        assert "ca_certificates[0]" in str(info.value)
    r = httpx.post(
        f"{server.url}/v1/sandboxes",
        json={"ca_certificates": "x"},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert r.status_code == 422


@pytest.mark.sandbox
def test_hutch_create_ca_cert_files_are_trusted(
    server: ServerProcess, authority: tuple[Authority, Path, Path], tmp_path: Path
) -> None:
    ca, cert, key = authority
    other = Authority("hutch-sandbox-other-ca")
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    (tmp_path / "other.pem").write_bytes(other.pem())
    env = {**os.environ, "HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key}

    def hutch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HUTCH_BIN), *args], env=env, capture_output=True, text=True, timeout=120
        )

    made = hutch(
        "create", "--ca-cert", str(tmp_path / "other.pem"), "--ca-cert", str(tmp_path / "ca.pem")
    )
    assert made.returncode == 0, made.stderr
    with Sandbox.connect(made.stdout.strip(), base_url=server.url, api_key=server.api_key) as sb:
        _serve_tls(sb, cert, key)
        assert _results(sb)["curl"] == "trusted"
        bundle = sb.read_file("/etc/ssl/certs/ca-certificates.crt").decode()
        assert split_pem(other.pem().decode())[0] in bundle  # both files, not just the last
    # A file that is not there, or not a certificate: told which, and nothing is made.
    missing = hutch("create", "--ca-cert", str(tmp_path / "nope.pem"))
    assert (
        missing.returncode != 0 and "--ca-cert" in missing.stderr and "nope.pem" in missing.stderr
    )
    (tmp_path / "bad.pem").write_text("not a certificate")
    bad = hutch("create", "--ca-cert", str(tmp_path / "bad.pem"))
    assert bad.returncode != 0 and "invalid_ca_certificate" in bad.stderr + bad.stdout, bad


class _ServerWithCAs(ServerProcess):
    def __init__(self, home: Path, cas: Path) -> None:
        super().__init__(home)
        self.cas = cas

    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_CA_CERTIFICATES": str(self.cas)}


@pytest.fixture()
def server_with_ca(authority: tuple[Authority, Path, Path]) -> Iterator[ServerProcess]:
    from tests.conftest import _cleanup_home

    home = Path(tempfile.mkdtemp(prefix="hutch-ca-", dir="/var/tmp"))
    (home / "extra-ca.pem").write_bytes(authority[0].pem())
    srv = _ServerWithCAs(home, home / "extra-ca.pem")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        _cleanup_home(srv)


@pytest.mark.sandbox
def test_the_servers_cas_are_trusted_in_every_sandbox(
    server_with_ca: ServerProcess, authority: tuple[Authority, Path, Path]
) -> None:
    _, cert, key = authority
    with Sandbox.create(base_url=server_with_ca.url, api_key=server_with_ca.api_key) as sb:
        _serve_tls(sb, cert, key)
        assert _results(sb) == dict.fromkeys(CLIENTS, "trusted")
