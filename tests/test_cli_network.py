"""`hutch ports expose|unexpose|ls` and `hutch network`, through a real server."""

from __future__ import annotations

import os
import subprocess
import time
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox
from hutch.cli._network import format_policy
from tests._server import HUTCH_BIN, ServerProcess


def test_format_policy() -> None:
    text = format_policy(
        {
            "network": "none",
            "network_allow": ["10.0.0.0/8", "192.0.2.1/32"],
            "network_deny": [],
            "address": "10.201.0.3",
        }
    )
    assert text.splitlines() == [
        "network none",
        "allow   10.0.0.0/8, 192.0.2.1/32",
        "deny    -",
        "address 10.201.0.3",
    ]


@pytest.mark.sandbox
def test_ports_and_network_commands(server: ServerProcess) -> None:
    env = {**os.environ, "HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key}

    def hutch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HUTCH_BIN), *args], env=env, capture_output=True, text=True, timeout=120
        )

    def get(url: str) -> httpx.Response:
        parts = urlsplit(url)
        return httpx.get(f"{server.url}{parts.path}", headers={"Host": parts.netloc})

    r = hutch("create", "--allow", "192.0.2.0/24", "--deny", "192.0.2.9")
    assert r.returncode == 0, r.stderr
    sb = Sandbox.connect(r.stdout.strip(), base_url=server.url, api_key=server.api_key)
    try:
        sb.exec("mkdir -p /srv && echo hi-from-cli > /srv/index.html")
        sb.exec("cd /srv && nohup python3 -m http.server 8080 >/dev/null 2>&1 &")

        r = hutch("ports", "expose", sb.id, "8080", "--name", "web")
        assert r.returncode == 0, r.stderr
        url = r.stdout.strip()
        assert url.startswith("http://8080-" + sb.id + "-") and url.endswith("/")
        assert hutch("ports", "expose", sb.id, "8080").stdout.strip() == url  # same URL
        deadline = time.monotonic() + 20
        while (resp := get(url)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert resp.text == "hi-from-cli\n"

        r = hutch("ports", "ls", sb.id)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["PORT", "NAME", "URL"]
        assert lines[1].split() == ["8080", "web", url]
        assert hutch("ports", "ls", sb.id, "8080").stdout.strip() == url
        r = hutch("ports", "ls", sb.id, "9999")
        assert r.returncode == 1 and "not exposed" in r.stderr

        r = hutch("ports", "unexpose", sb.id, "8080")
        assert r.returncode == 0, r.stderr
        assert get(url).status_code == 404  # dead at once
        assert hutch("ports", "ls", sb.id).stdout.splitlines() == ["PORT  NAME  URL"]
        r = hutch("ports", "unexpose", sb.id, "8080")
        assert r.returncode == 1 and "not exposed" in r.stderr
        r = hutch("ports", "expose", sb.id, "70000")
        assert r.returncode == 1 and "65535" in r.stderr, r.stderr

        r = hutch("network", sb.id)  # the policy given to `hutch create`
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[:3] == [
            "network none",
            "allow   192.0.2.0/24",
            "deny    192.0.2.9/32",
        ]
        r = hutch("network", sb.id, "internet", "--deny", "10.0.0.0/8", "--deny", "192.0.2.0/24")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[:3] == [
            "network internet",
            "allow   -",
            "deny    10.0.0.0/8, 192.0.2.0/24",
        ]
        assert sb.get_network()["network_deny"] == ["10.0.0.0/8", "192.0.2.0/24"]
        r = hutch("network", sb.id, "none", "--allow", "10.0.0.0/33")
        assert r.returncode == 1 and "network_allow" in r.stderr, r.stderr
        r = hutch("network", sb.id, "--allow", "10.0.0.0/8")
        assert r.returncode == 2 and "need a mode" in r.stderr
        assert sb.get_network()["network"] == "internet"  # unchanged by the refused calls
    finally:
        sb.destroy()
