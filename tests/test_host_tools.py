"""Host tools (`runc`, `ip`, `nft`, `nsenter`, …) run by the runtime without forking the server."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.runtime.container import _libnft
from hutch.runtime.container._rtnl import Rtnl
from hutch.runtime.container._spawn import ToolOutput, exit_code, in_netns, run_tool, spawn


async def test_a_tool_gets_its_input_and_gives_its_exit_code_and_errors() -> None:
    assert await run_tool(
        ["sh", "-c", 'read line; echo "got $line" >&2; exit 3'], b"x\n"
    ) == ToolOutput(3, b"", b"got x\n")


async def test_an_input_bigger_than_a_pipe_and_a_long_error_both_get_through() -> None:
    data = os.urandom(300_000)
    out = await run_tool(["sh", "-c", "wc -c >&2; head -c 200000 /dev/zero >&2"], data)
    assert out.exit_code == 0 and out.stderr.startswith(b"300000\n")
    assert len(out.stderr) == 7 + 200_000


async def test_without_input_the_tool_reads_nothing() -> None:
    assert await run_tool(["sh", "-c", "wc -c >&2"]) == ToolOutput(0, b"", b"0\n")


async def test_a_tool_that_writes_much_before_it_reads_its_input_does_not_hang() -> None:
    # runc exec of a helper may answer before it has read all it was given.
    data = os.urandom(300_000)
    out = await run_tool(
        ["sh", "-c", "head -c 200000 /dev/zero; wc -c >&2"], data, capture_stdout=True
    )
    assert out == ToolOutput(0, bytes(200_000), b"300000\n")


async def test_a_tool_gets_the_environment_and_session_it_is_given() -> None:
    # Field 6 of /proc/PID/stat is the session: a new session's id is its leader's pid.
    script = 'echo "$HUTCH_T $PATH"; [ "$(cut -d" " -f6 /proc/$$/stat)" = "$$" ]'
    env = {"HUTCH_T": "x", "PATH": "/usr/bin:/bin"}
    assert await run_tool(
        ["sh", "-c", script], capture_stdout=True, env=env, new_session=True
    ) == ToolOutput(0, b"x /usr/bin:/bin\n", b"")
    assert (await run_tool(["sh", "-c", script], env=env)).exit_code == 1


async def test_a_tool_given_fds_has_exactly_those_and_no_other_of_the_servers() -> None:
    # As `runc run` gets its listener at fd 3 and the work cgroup's fds after it, beside an
    # fd of the server's that an exec would keep (inherited, not close-on-exec).
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_r, True)
    a_r, a_w = os.pipe2(os.O_CLOEXEC)
    b_r, b_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    report = (
        "import os\n"
        "fds = [fd for fd in range(256) if os.path.exists(f'/proc/self/fd/{fd}')]\n"
        "print(fds, os.read(3, 1), os.read(4, 1))\n"
    )
    try:
        os.write(a_w, b"a")
        os.write(b_w, b"b")
        pid = spawn(
            [sys.executable, "-I", "-S", "-c", report],
            stdin=devnull,
            stdout=out_w,
            stderr=devnull,
            fds=(b_r, a_r),
        )
        os.close(out_w)
        assert await exit_code(pid) == 0
        assert os.read(out_r, 4096) == b"[0, 1, 2, 3, 4] b'b' b'a'\n"
    finally:
        for fd in (leaked_r, leaked_w, a_r, a_w, b_r, b_w, out_r, devnull):
            os.close(fd)


async def test_a_missing_tool_raises_and_leaks_no_fd() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            await run_tool(["hutch-no-such-tool"], b"input", capture_stdout=True)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.fixture()
def netns() -> Iterator[str]:
    """A network namespace of its own (held by a sleeping process), as a sandbox's is."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    holder = subprocess.Popen(["unshare", "--net", "sleep", "300"])
    path = f"/proc/{holder.pid}/ns/net"
    try:
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):  # unshare not done yet
            os.sched_yield()
        yield path
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.root
async def test_a_tool_run_in_a_netns_sees_that_netns_and_the_server_stays_in_its_own(
    netns: str,
) -> None:
    # A sandbox's network attach runs `ip` and `nft` in its netns without nsenter.
    ours = os.readlink("/proc/thread-self/ns/net")
    out = await run_tool(["ip", "-o", "link", "show"], capture_stdout=True, netns=netns)
    assert out.exit_code == 0
    assert [line.split(":")[1].strip() for line in out.stdout.decode().splitlines()] == ["lo"]
    host = await run_tool(["ip", "-o", "link", "show"], capture_stdout=True)
    assert len(host.stdout.decode().splitlines()) > 1  # this host has more than lo
    assert os.readlink("/proc/thread-self/ns/net") == ours


@pytest.mark.root
def test_procfs_sysctls_written_in_a_netns_are_that_netns_own(netns: str) -> None:
    # route_localnet on the sandbox's eth0 is written so: the host's own must not change.
    knob = Path("/proc/sys/net/ipv4/conf/lo/route_localnet")
    host_before = knob.read_text()
    assert in_netns(netns, knob.read_text) == "0\n"  # a new netns's own default
    in_netns(netns, lambda: knob.write_text("1\n"))
    assert in_netns(netns, knob.read_text) == "1\n"
    assert knob.read_text() == host_before
    seen = subprocess.run(
        ["nsenter", f"--net={netns}", "cat", str(knob)], capture_output=True, check=True
    )
    assert seen.stdout == b"1\n"


def test_in_netns_of_no_netns_raises() -> None:
    with pytest.raises(FileNotFoundError):
        in_netns("/proc/self/ns/hutch-no-such-ns", lambda: None)


@pytest.mark.root
def test_in_netns_raises_what_fails_in_it(netns: str) -> None:
    with pytest.raises(ZeroDivisionError):
        in_netns(netns, lambda: 1 // 0)


def _tables(netns: str) -> str:
    out = subprocess.run(
        ["nsenter", f"--net={netns}", "nft", "list", "tables"], capture_output=True, check=True
    )
    return out.stdout.decode()


@pytest.mark.root
def test_libnft_applies_a_script_in_the_threads_netns_all_or_nothing(netns: str) -> None:
    # A sandbox's loopback table and the host rules go through libnftables, not `nft`.
    if not _libnft.available():
        pytest.skip("no libnftables here: the runtime runs `nft`")
    good = "table ip hutch_libnft_t {\n  chain c { type filter hook input priority 0; }\n}\n"
    assert in_netns(netns, lambda: _libnft.apply(good)) is None
    assert "table ip hutch_libnft_t" in _tables(netns)
    assert "hutch_libnft_t" not in _tables("/proc/self/ns/net")
    # One transaction: a bad rule after a good table leaves neither, and says why.
    bad = "add table ip hutch_libnft_u\nadd rule ip hutch_libnft_u nochain tcp dport 99 acept\n"
    error = in_netns(netns, lambda: _libnft.apply(bad))
    assert error is not None and "Error" in error
    assert "hutch_libnft_u" not in _tables(netns)


def _ip(netns: str, *args: str) -> str:
    argv = ["ip", *args] if netns == "" else ["nsenter", f"--net={netns}", "ip", *args]
    return subprocess.run(argv, capture_output=True, check=True, text=True).stdout


@pytest.mark.root
def test_rtnl_gives_a_netns_a_veth_its_addresses_and_a_way_out_as_ip_did(netns: str) -> None:
    # A sandbox's network attach, by rtnetlink from the server instead of `ip -batch`.
    name = f"hxr{os.getpid() % 100000}"
    pid = int(netns.split("/")[2])
    try:
        with Rtnl() as rtnl:
            rtnl.add_veth(name, "eth0", pid)
            rtnl.add_address(name, "10.254.99.0", 31)
            rtnl.set_up(name)
            with pytest.raises(OSError) as again:  # an existing name fails, and says which
                rtnl.add_veth(name, "eth0", pid)
            assert again.value.errno == errno.EEXIST and name in str(again.value)

        def sandbox_side() -> None:
            with Rtnl() as rtnl:
                rtnl.add_address("eth0", "10.254.99.1", 31)
                rtnl.set_up("eth0")
                rtnl.add_default_route("10.254.99.0")
                with pytest.raises(OSError, match="no device eth9"):
                    rtnl.set_up("eth9")

        in_netns(netns, sandbox_side)
        assert "10.254.99.0/31" in _ip("", "-4", "-o", "addr", "show", "dev", name)
        assert "10.254.99.1/31" in _ip(netns, "-4", "-o", "addr", "show", "dev", "eth0")
        assert _ip(netns, "-4", "route", "show", "default").split()[:5] == [
            "default",
            "via",
            "10.254.99.0",
            "dev",
            "eth0",
        ]
        assert "link-netnsid" in _ip("", "-o", "link", "show", "dev", name)  # its peer: not here

        # The veth carries traffic: a listener on the sandbox's address, reached from here.
        def listen() -> socket.socket:
            server = socket.socket()
            server.bind(("10.254.99.1", 0))
            server.listen(1)
            return server

        server = in_netns(netns, listen)
        with server, socket.create_connection(server.getsockname(), timeout=5):
            pass
    finally:
        subprocess.run(["ip", "link", "delete", name], capture_output=True)
