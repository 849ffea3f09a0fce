"""A command as another user starts through the static launcher in the agent's code bundle
(agent/_launch.py: subprocess would fork the whole agent to switch users), and comes out as
exactly that user: its uid, gid and groups, no capabilities, no way back to root."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

PROBE = (
    "import os; s = open('/proc/self/status').read();"
    "caps = [l.split()[1] for l in s.splitlines() if l.startswith(('CapPrm', 'CapEff', 'CapAmb'))];"
    "print(os.getresuid(), os.getresgid(), sorted(os.getgroups()), caps);"
    "os.setuid(0)"
)


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key)
    yield box
    box.destroy()


def test_the_launcher_is_built_into_the_agent_bundle(sb: Sandbox) -> None:
    r = sb.exec("test -x /.hutch/code/hutch-launch && echo built")
    assert r.stdout == "built\n", r.stderr


@pytest.mark.parametrize("user", ["user", "nobody", "4242"])
def test_a_command_as_another_user_is_that_user_and_cannot_become_root(
    sb: Sandbox, user: str
) -> None:
    # What the image's files say (as root, who reads them): `id` resolves the name.
    who = user if not user.isdigit() else None
    expected_uid = int(sb.exec(f"id -u {who}").stdout) if who else int(user)
    expected_gid = int(sb.exec(f"id -g {who}").stdout) if who else 0  # Docker's: gid 0
    groups = sorted(int(g) for g in sb.exec(f"id -G {who}").stdout.split()) if who else [0]
    for r in (
        sb.run("python3", ["-c", PROBE], user=user),
        sb.exec(f'python3 -c "{PROBE}"', user=user),
    ):
        ids = (expected_uid,) * 3, (expected_gid,) * 3, groups
        assert r.stdout.startswith(f"{ids[0]} {ids[1]} {ids[2]} "), (r.stdout, r.stderr)
        caps = r.stdout.split("] [", 1)[1]  # CapPrm, CapEff and (not under gVisor) CapAmb
        assert caps.startswith("'0000000000000000', '0000000000000000'"), r.stdout
        assert set(caps.strip("[]\n").replace("'", "").split(", ")) == {"0" * 16}, r.stdout
        assert r.exit_code != 0 and "PermissionError" in r.stderr  # setuid(0) refused
    home = sb.exec("echo $HOME; pwd", user=user, cwd="/tmp")
    assert home.stdout.splitlines()[1] == "/tmp"


def test_a_missing_program_reads_the_same_as_another_user(sb: Sandbox) -> None:
    as_root = sb.run("/no/such/program", [])
    as_user = sb.run("/no/such/program", [], user="user")
    assert (as_user.exit_code, as_user.stderr) == (as_root.exit_code, as_root.stderr)
    assert as_user.exit_code == 127 and "No such file" in as_user.stderr
