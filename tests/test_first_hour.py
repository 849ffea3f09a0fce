"""What a new user trips on in the first hour (issue 23), against real sandboxes: the tools in
the default image, its Python settings and normal user, a name lookup without network that
fails at once, PID 1's name in ps, and `hutch wait-port`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from hutch import ProcessTimeout, Sandbox
from tests._server import HUTCH_BIN, ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Iterator[Sandbox]:
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sandbox:
        yield sandbox


def test_the_default_image_has_the_tools_people_reach_for(sb: Sandbox) -> None:
    tools = "vi nano less jq wget make unzip sudo git curl python3 node npm"
    r = sb.exec(f"for t in {tools}; do command -v $t >/dev/null || echo missing: $t; done")
    assert r.stdout == "", r.stdout
    r = sb.exec("""echo '{"a": [1, 2]}' | jq -c .a""")
    assert r.stdout == "[1,2]\n"
    r = sb.run("python3", ["-c", "import requests; print(requests.__name__)"])
    assert r.stdout == "requests\n", r.stderr
    # Commands still run as root by default, and scripts that say `sudo` work as root.
    assert sb.exec("id -un; sudo -n id -un").stdout == "root\nroot\n"
    # `user` is E2B's normal user. Its sudoers entry is there, but a sandbox runs with
    # no_new_privs: nothing inside can gain root, and sudo says so instead of asking.
    r = sb.exec("id -u; echo $HOME; sudo -n true", user="user")
    assert r.stdout.split() == ["1000", "/home/user"] and r.exit_code == 1
    assert '"no new privileges" flag is set' in r.stderr
    assert sb.exec("touch /workspace/by-user && echo ok", user="user").stdout == "ok\n"


def test_python_output_is_unbuffered_and_no_stale_bytecode(sb: Sandbox) -> None:
    r = sb.exec("echo $PYTHONUNBUFFERED $PYTHONDONTWRITEBYTECODE")
    assert r.stdout == "1 1\n"
    # A server's first line shows up while it runs, not when its buffer fills.
    p = sb.start_process("python3 -m http.server 8123", process_id="unbuffered")
    try:
        p.wait_for_log("Serving HTTP on", timeout=30)
    finally:
        p.kill()
    # An agent rewriting a module twice within a second runs the new one, not a stale .pyc.
    for value in (1, 2):
        sb.write_file("/workspace/stale_mod.py", f"VALUE = {value}\n")
        r = sb.exec("python3 -c 'import stale_mod; print(stale_mod.VALUE)'", cwd="/workspace")
        assert r.stdout == f"{value}\n", r.stderr
    assert not sb.exists("/workspace/__pycache__")


def test_without_network_a_name_lookup_fails_at_once_with_a_clear_error(sb: Sandbox) -> None:
    assert sb.info().network == "none"
    r = sb.exec("getent hosts pypi.org; echo rc=$?")
    assert r.stdout.strip() == "rc=2"  # getent: "key not found"
    r = sb.run("python3", ["-c", "import socket; socket.getaddrinfo('pypi.org', 443)"])
    assert r.exit_code == 1
    assert "socket.gaierror" in r.stderr and "Temporary failure in name resolution" in r.stderr
    # The resolver says why in the sandbox's own words.
    assert "network=none" in sb.read_file("/etc/resolv.conf", text=True)


def test_without_network_pip_gives_up_at_once_and_the_setting_follows_the_network(
    sb: Sandbox, server: ServerProcess
) -> None:
    r = sb.exec("pip download --no-deps -d /tmp/dl pytest 2>&1")
    assert r.exit_code != 0
    assert "Temporary failure in name resolution" in r.stdout
    assert "No matching distribution found for pytest" in r.stdout
    # One retry (no back-off before it), whose warning names the cause; pip's default five
    # retries with back-off took ~8 s more.
    assert r.stdout.count("Retrying") == 1
    assert sb.exec("echo $PIP_RETRIES $npm_config_fetch_retries").stdout == "1 0\n"

    with Sandbox.create(
        env={"PIP_RETRIES": "3"}, base_url=server.url, api_key=server.api_key
    ) as other:
        probe = "echo ${PIP_RETRIES:-unset} ${npm_config_fetch_retries:-unset}"
        assert other.exec(probe).stdout == "3 0\n"  # the sandbox's own env wins
        other.set_network("internet")
        assert other.exec(probe).stdout == "3 unset\n"  # retries are useful with a network
        other.set_network("none")
        assert other.exec(probe).stdout == "3 0\n"


def test_pid_1_is_called_hutch_agent_in_ps(sb: Sandbox) -> None:
    r = sb.exec("ps -o comm=,args= -p 1")
    assert r.stdout.split() == ["hutch-agent", "hutch-agent"], r.stdout
    assert "ld-linux" not in sb.exec("ps -eo args").stdout


def test_wait_port_from_the_cli_and_the_api(sb: Sandbox, server: ServerProcess) -> None:
    env = {**os.environ, "HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key}

    def hutch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HUTCH_BIN), *args], env=env, capture_output=True, text=True, timeout=120
        )

    # Started in a session-less shell, not as a Hutch process: the sandbox-wide wait sees it.
    sb.exec("nohup sh -c 'sleep 1; exec python3 -m http.server 8124' >/dev/null 2>&1 &")
    r = hutch("wait-port", sb.id, "8124", "--http", "/", "--timeout", "60")
    assert (r.returncode, r.stderr) == (0, "")
    r = hutch("wait-port", sb.id, "8125", "--timeout", "0.5")
    assert r.returncode == 1 and "nothing was listening on port 8125" in r.stderr
    with pytest.raises(ProcessTimeout):
        sb.wait_for_port(8125, timeout=0.3)
    assert sb.wait_for_port(8124, mode="http") == 200

    with server.client() as http:
        bad = http.post(f"/v1/sandboxes/{sb.id}/wait-for-port", json={"port": 70000})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        gone = http.post("/v1/sandboxes/sb-000000000000/wait-for-port", json={"port": 80})
        assert gone.status_code == 404
