"""Egress header injection: the sandbox talks to its model through Hutch's egress proxy, which
adds the key; the key never enters the sandbox (env, /proc, files), the logs, the database's
plaintext or any API response, and no other sandbox can use it.

The upstream is the fake Anthropic API (tests/support/fake_anthropic.py) on the HOST's loopback;
this module's server sends api.anthropic.com there (HUTCH_EGRESS_UPSTREAMS, server config).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch import InvalidRequest, Sandbox
from hutch.runtime import ImageNotFound, ImageStore
from tests._server import SHARED_IMAGES, ServerProcess, free_port, runtime_ids
from tests.conftest import _cleanup_home
from tests.test_secrets import _files_containing

pytestmark = pytest.mark.sandbox

FAKE_API = Path(__file__).with_name("support") / "fake_anthropic.py"
KEY = "sk-ant-egress-" + "Xy7" * 12
OTHER_KEY = "sk-ant-other-" + "Qw4" * 12
RULE = {"host": "api.anthropic.com", "header": "x-api-key", "secret": "ANTHROPIC_API_KEY"}
MESSAGE = json.dumps(
    {"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)


class _Upstream:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log = work / "upstream.jsonl"
        self.log.touch()
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_API), str(self.port), str(self.log)],
            env={"FAKE_TARGET": "/workspace/hello.txt", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.head(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError("the fake upstream did not start")

    def requests(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class _EgressServer(ServerProcess):
    upstream_url = ""

    def env(self) -> dict[str, str]:
        env = super().env()
        env["HUTCH_EGRESS_UPSTREAMS"] = f"api.anthropic.com={self.upstream_url}"
        # A pooled sandbox gets its rules when claimed (test_a_pooled_sandbox_gets_it_too).
        env["HUTCH_WARM_POOLS"] = "default=1"
        return env


@pytest.fixture(scope="module")
def egress() -> Iterator[tuple[_EgressServer, _Upstream]]:
    home = Path(tempfile.mkdtemp(prefix="hutch-test-egress-", dir="/var/tmp"))
    work = Path(tempfile.mkdtemp(prefix="hutch-test-upstream-", dir="/var/tmp"))
    upstream = _Upstream(work)  # NB: outside the home, whose files must never hold the key
    srv = _EgressServer(home)
    srv.upstream_url = f"http://127.0.0.1:{upstream.port}"
    srv.start()
    try:
        yield srv, upstream
    finally:
        srv.stop()
        upstream.stop()
        _cleanup_home(srv)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture()
def env(
    egress: tuple[_EgressServer, _Upstream], monkeypatch: pytest.MonkeyPatch
) -> tuple[_EgressServer, _Upstream]:
    monkeypatch.setenv("HUTCH_URL", egress[0].url)
    monkeypatch.setenv("HUTCH_API_KEY", egress[0].api_key)
    return egress


def _post(sb: Sandbox, url: str, headers: str = "", user: str | None = None) -> tuple[int, str]:
    """curl from inside the sandbox: (HTTP status, body)."""
    r = sb.exec(
        f"curl -sS -m 20 -o /tmp/out -w '%{{http_code}}' -H 'content-type: application/json' "
        f"{headers} -d @- {url}; echo; cat /tmp/out",
        stdin=MESSAGE.encode(),
        user=user,
        timeout=60,
    )
    status, _, body = r.stdout.partition("\n")
    return int(status or 0), body


def test_curl_gets_answers_and_the_key_never_enters(env: tuple[_EgressServer, _Upstream]) -> None:
    srv, upstream = env
    needle = KEY.encode()
    with Sandbox.create(secrets={"ANTHROPIC_API_KEY": KEY}, egress_secrets=[RULE]) as sb:
        seen = sb.exec("echo $ANTHROPIC_API_KEY; echo $ANTHROPIC_BASE_URL").stdout.split()
        assert seen[0] == "hutch-egress-injected"
        base = seen[1]
        assert base.startswith("http://10.") and base.endswith("/api.anthropic.com"), base
        before = len(upstream.requests())
        # The sandbox's own x-api-key is replaced, not sent along (and not duplicated).
        status, body = _post(
            sb, f"{base}/v1/messages", "-H 'x-api-key: forged' -H 'X-Api-Key: forged2'"
        )
        assert status == 200, body
        assert json.loads(body)["content"][0]["text"].startswith("Done")
        # Streaming (SSE) through the proxy, as the CLIs use it.
        r = sb.exec(
            f"curl -sSN -m 20 -H 'content-type: application/json' -d @- {base}/v1/messages",
            stdin=json.dumps({**json.loads(MESSAGE), "stream": True}).encode(),
        )
        assert "event: message_stop" in r.stdout, r.stdout
        got = upstream.requests()[before:]
        assert [q["x-api-keys"] for q in got] == [[KEY], [KEY]], got
        assert got[1]["stream"] is True

        # Nowhere inside: environment of every process, files it can write, the agent's env.
        # The key is put together in a file, so the probe's own command line and environment
        # hold only halves; a planted copy is the positive control that the search finds it.
        half = len(KEY) // 2
        r = sb.exec(
            'printf %s%s "$HEAD" "$TAIL" > /dev/shm/pat; '
            'printf %s%s "$HEAD" "$TAIL" > /workspace/planted; '
            "env | grep -c -F -f /dev/shm/pat; "
            "cat /proc/[0-9]*/environ 2>/dev/null | grep -a -c -F -f /dev/shm/pat; "
            "grep -rlsF -f /dev/shm/pat /tmp /root /home /workspace /var /etc /run /dev/shm /opt"
            " | grep -v '^/dev/shm/pat$'; exit 0",
            env={"HEAD": KEY[:half], "TAIL": KEY[half:]},
        )
        assert r.stdout == "0\n0\n/workspace/planted\n", r.stdout
        sb.exec("rm -f /workspace/planted /dev/shm/pat")
        # Nowhere on the host but encrypted: logs, bundles, the sandbox's writable layer.
        assert _files_containing(srv.home, needle) == []
        with srv.client() as http:
            responses = [
                http.get(p) for p in ("/v1/sandboxes", f"/v1/sandboxes/{sb.id}", "/openapi.json")
            ]
            for resp in responses:
                assert needle not in resp.content
            assert "ANTHROPIC_API_KEY" in responses[1].json()["secret_names"]
        db = sqlite3.connect(f"file:{srv.home / 'hutch.db'}?mode=ro", uri=True)
        blobs = [bytes(b) for (b,) in db.execute("SELECT ciphertext FROM sandbox_secrets")]
        db.close()
        assert blobs, "the sandbox's secret is not stored at all"  # else the loop proves nothing
        assert all(needle not in blob for blob in blobs)
    assert needle not in srv.log_path.read_bytes()


def test_claude_code_works_through_the_injection(env: tuple[_EgressServer, _Upstream]) -> None:
    _, upstream = env
    try:
        ImageStore(SHARED_IMAGES).get("agents")
    except ImageNotFound:
        pytest.fail("the agents image is not built: run `sudo .venv/bin/hutch image build agents`")
    with Sandbox.create(
        image="agents", secrets={"ANTHROPIC_API_KEY": KEY}, egress_secrets=[RULE]
    ) as sb:
        before = len(upstream.requests())
        r = sb.exec(
            "claude -p 'Create hello.txt in the current directory.' --allowedTools Write",
            user="user",
            cwd="/workspace",
            timeout=180,
        )
        assert r.exit_code == 0, (r.stdout, r.stderr)
        assert "Done" in r.stdout
        assert sb.exec("cat /workspace/hello.txt").stdout == (
            "written by the agent through the fake model\n"
        )
        messages = [q for q in upstream.requests()[before:] if q["path"].startswith("/v1/mess")]
        assert len(messages) >= 2
        assert all(q["x-api-key"] == KEY for q in messages)
        r = sb.exec("cat /proc/[0-9]*/environ | tr '\\0' '\\n' | grep -c sk-ant-egress; exit 0")
        assert r.stdout.strip() == "0"


def test_other_sandboxes_and_hosts_cannot_use_it(env: tuple[_EgressServer, _Upstream]) -> None:
    srv, upstream = env
    with (
        Sandbox.create(secrets={"ANTHROPIC_API_KEY": KEY}, egress_secrets=[RULE]) as owner,
        Sandbox.create(network="internet") as plain,
        Sandbox.create(
            secrets={"ANTHROPIC_API_KEY": OTHER_KEY}, egress_secrets=[RULE], network="internet"
        ) as other,
    ):
        base = owner.exec("echo $ANTHROPIC_BASE_URL").stdout.strip()
        other_base = other.exec("echo $ANTHROPIC_BASE_URL").stdout.strip()
        assert other_base != base
        before = len(upstream.requests())
        # A sandbox without egress secrets, with internet: the host port is closed to it.
        assert _post(plain, f"{base}/v1/messages")[0] == 0
        # Another sandbox with its own rules: only its own gateway; the owner's is closed.
        assert _post(other, f"{base}/v1/messages")[0] == 0
        # Its own works, with its own key.
        assert _post(other, f"{other_base}/v1/messages")[0] == 200
        # A host that is not configured is refused, and nothing goes upstream for it.
        host_port = base.split("/")[2]
        status, body = _post(owner, f"http://{host_port}/evil.example.com/v1/messages")
        assert status == 403 and "egress_host_not_configured" in body, body
        # Only that port on the gateway.
        gateway, port_text = host_port.split(":")
        assert _post(owner, f"http://{gateway}:{int(port_text) + 1}/api.anthropic.com/x")[0] == 0
        assert [q["x-api-key"] for q in upstream.requests()[before:]] == [OTHER_KEY]
        # From the host: nothing listens on its other addresses; on the gateway address, a
        # connection from the host is not the sandbox's and is refused.
        port = int(host_port.split(":")[1])
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"http://127.0.0.1:{port}/api.anthropic.com/v1/messages", content=MESSAGE)
        r = httpx.post(f"http://{host_port}/api.anthropic.com/v1/messages", content=MESSAGE)
        assert r.status_code == 403 and r.json()["error"]["code"] == "egress_forbidden"
        assert KEY not in r.text
        # The port is open exactly to the two sandboxes with rules, on their own gateways.
        assert _gateway_elements(srv) == 2
    assert _gateway_elements(srv) == 0
    with pytest.raises(httpx.ConnectError):  # the owner's listener went with it
        httpx.post(f"http://{host_port}/api.anthropic.com/v1/messages", content=MESSAGE)


def test_a_pooled_sandbox_gets_it_too(env: tuple[_EgressServer, _Upstream]) -> None:
    srv, upstream = env
    deadline = time.monotonic() + 120
    headers = {"Authorization": f"Bearer {srv.api_key}"}
    while not any(
        p["ready"] for p in httpx.get(f"{srv.url}/v1/pools", headers=headers).json()["pools"]
    ):
        assert time.monotonic() < deadline, "the warm pool did not fill"
        time.sleep(0.2)
    with Sandbox.create(secrets={"ANTHROPIC_API_KEY": KEY}, egress_secrets=[RULE]) as sb:
        ids = runtime_ids(srv.home)
        assert ids.get(sb.id, "").startswith("pool-"), ids  # it came from the pool
        base = sb.exec("echo $ANTHROPIC_API_KEY $ANTHROPIC_BASE_URL").stdout.split()
        assert base[0] == "hutch-egress-injected"
        before = len(upstream.requests())
        assert _post(sb, f"{base[1]}/v1/messages")[0] == 200
        assert [q["x-api-keys"] for q in upstream.requests()[before:]] == [[KEY]]


def _gateway_elements(srv: ServerProcess) -> int:
    out = subprocess.run(
        ["nft", "-j", "list", "sets", "inet"], capture_output=True, text=True, check=True
    ).stdout
    import hashlib

    tag = hashlib.sha256(str(srv.home.resolve()).encode()).hexdigest()[:6]
    for item in json.loads(out)["nftables"]:
        s = item.get("set")
        if s and s["table"] == f"hutch_{tag}" and s["name"] == "gateways":
            return len(s.get("elem", []))
    raise AssertionError("no gateways set")


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({**RULE, "header": "x api key"}, "header"),
        ({**RULE, "header": "Host"}, "header"),
        ({**RULE, "host": "api.anthropic.com/evil"}, "host"),
        ({**RULE, "host": "http://api.anthropic.com"}, "host"),
        # The server would send the real secret to its own network, at a path of the
        # sandbox's choosing.
        ({**RULE, "host": "localhost"}, "host"),
        ({**RULE, "host": "api.localhost"}, "host"),
        ({**RULE, "host": "127.0.0.1"}, "host"),
        ({**RULE, "host": "127.1"}, "host"),
        ({**RULE, "host": "2130706433"}, "host"),
        ({**RULE, "host": "10.0.0.5"}, "host"),
        ({**RULE, "host": "169.254.169.254"}, "host"),
        ({**RULE, "host": "metadata.google.internal"}, "host"),
        ({**RULE, "host": "printer.local"}, "host"),
        ({**RULE, "host": "intranet"}, "host"),
        ({**RULE, "secret": "NOT-A-NAME"}, "secret"),
        ({**RULE, "secret": "MISSING"}, "MISSING"),
        ({**RULE, "prefix": "Bearer\r\nX: y"}, "prefix"),
        ({**RULE, "base_url_env": "1BAD"}, "base_url_env"),
        ({**RULE, "unknown": "x"}, "unknown"),
    ],
)
def test_bad_egress_secrets_are_422(
    egress: tuple[_EgressServer, _Upstream], rule: dict[str, str], field: str
) -> None:
    srv, _ = egress
    with srv.client() as http:
        r = http.post(
            "/v1/sandboxes",
            json={"secrets": {"ANTHROPIC_API_KEY": KEY}, "egress_secrets": [rule]},
        )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert field in r.text
    assert KEY not in r.text


def test_bad_egress_secret_through_the_sdk(env: tuple[_EgressServer, _Upstream]) -> None:
    with pytest.raises(InvalidRequest, match="secret"):
        Sandbox.create(egress_secrets=[{**RULE, "secret": "NOPE"}])


def test_injection_survives_a_server_crash(env: tuple[_EgressServer, _Upstream]) -> None:
    srv, upstream = env
    sb = Sandbox.create(secrets={"ANTHROPIC_API_KEY": KEY}, egress_secrets=[RULE])
    try:
        base = sb.exec("echo $ANTHROPIC_BASE_URL").stdout.strip()
        srv.kill9()
        srv.start()
        # Same port (kept in HUTCH_HOME), the sandbox re-registered by its address.
        before = len(upstream.requests())
        assert _post(sb, f"{base}/v1/messages")[0] == 200
        assert [q["x-api-keys"] for q in upstream.requests()[before:]] == [[KEY]]
        assert sb.exec("echo $ANTHROPIC_BASE_URL").stdout.strip() == base
    finally:
        sb.destroy()
