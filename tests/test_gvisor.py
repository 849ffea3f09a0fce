"""runtime="gvisor": a sandbox under runsc, reached through an agent socket that needs no fd
passing, and what its own processes must not reach through that socket's directory.

The rest of the capabilities are the integration suite's, run again with
HUTCH_TEST_RUNTIME=gvisor (see .ci/run).
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import CommandTimeout, Sandbox
from tests._server import ServerProcess
from tests.support.s3 import S3Server

pytestmark = pytest.mark.sandbox

PROBE = """
import socket, sys
family, target = sys.argv[1], sys.argv[2:]
s = socket.socket(getattr(socket, family))
s.settimeout(3)
try:
    s.connect(target[0] if len(target) == 1 else (target[0], int(target[1])))
    print("connected")
except OSError as e:
    print("refused", e.errno)
"""


def _connect(box: Sandbox, family: str, *target: object) -> str:
    """Try to connect from inside the sandbox; "connected" or "refused <errno>"."""
    box.write_file("/tmp/probe.py", PROBE)
    return box.run("python3", ["/tmp/probe.py", family, *map(str, target)]).stdout.strip()


@pytest.fixture(scope="module")
def own_server() -> Iterator[ServerProcess]:
    """A server of this module's own: one test kills and restarts it."""
    home = Path(tempfile.mkdtemp(prefix="hutch-gvisor-", dir="/var/tmp"))
    srv = ServerProcess(home)
    srv.start()
    yield srv
    srv.stop()
    from tests.conftest import _cleanup_home

    _cleanup_home(srv)


@pytest.fixture(scope="module")
def gsb(own_server: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create(base_url=own_server.url, api_key=own_server.api_key, runtime="gvisor")
    yield box
    box.destroy()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


def _in_bucket(s3: S3Server, key: str, text: str, timeout: float = 15.0) -> bool:
    """Whether the object `key` holds `text` within `timeout` seconds. Nothing touches the
    sandbox meanwhile: the upload must not wait for more file work in it. (Without the
    agent's flush an idle sandbox never uploads at all, so the bound is generous. The waits
    past 5 and 15 s seen at load 9 were uploads that never came: a flush between write_file's
    close and its rename, and rclone's upload at write-back 0 failed for good; see
    _bucket_spec.WRITE_BACK.)"""
    path = s3.root / key
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text() == text:
            return True
        time.sleep(0.02)
    return False


def _bundle(server: ServerProcess, box: Sandbox) -> Path:
    return server.home / "sandboxes" / box.id  # cold-created: runtime id == sandbox id


def _gateway(server: ServerProcess, box: Sandbox) -> str:
    """The host side of the sandbox's veth (index n of 10.201.0.0/16: address 2n)."""
    index = int((server.home / "net" / box.id).read_text())
    return str(ipaddress.IPv4Address("10.201.0.0") + 2 * index)


def test_the_sandbox_runs_in_gvisor(gsb: Sandbox) -> None:
    assert gsb.info().runtime == "gvisor"
    r = gsb.exec("dmesg | head -1; echo hi | tr a-z A-Z")
    assert "gVisor" in r.stdout, r.stdout  # the sentry's own kernel log, not the host's
    assert r.stdout.endswith("HI\n")


def test_files_processes_and_sessions_work(gsb: Sandbox) -> None:
    gsb.write_file("/workspace/a.txt", "hello")
    assert gsb.read_file("/workspace/a.txt", text=True) == "hello"
    # Root inside owns the image's files (the layers are idmapped back from the shifted range).
    assert gsb.exec("python3 -c 'import os; print(os.stat(\"/etc\").st_uid)'").stdout == "0\n"
    p = gsb.start_process("python3 -m http.server 8080", cwd="/workspace")
    p.wait_for_port(8080, mode="http", timeout=30)
    assert "hello" in gsb.exec("curl -s localhost:8080/a.txt").stdout
    s = gsb.create_session(cwd="/tmp")
    s.exec("cd / && export A=1")
    assert s.exec("pwd; echo $A").stdout == "/\n1\n"


def test_agent_socket_is_gone_from_inside(gsb: Sandbox) -> None:
    """The agent bound its socket in the shared directory; the host moved it out at once."""
    assert gsb.exec("ls -A /.hutch/sock").stdout == ""
    assert _connect(gsb, "AF_UNIX", "/.hutch/sock/agent.sock").startswith("refused")


def test_no_host_socket_can_be_opened_from_inside(own_server: ServerProcess, gsb: Sandbox) -> None:
    """A host unix socket placed where the sandbox sees it (as another sandbox's agent socket
    or the API's would be) cannot be connected to: runsc runs with host-uds=create only."""
    path = _bundle(own_server, gsb) / "sock" / "host.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    listener.setblocking(False)
    try:
        assert _connect(gsb, "AF_UNIX", "/.hutch/sock/host.sock") == "refused 1"  # EPERM
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever arrived
    finally:
        listener.close()
        path.unlink()


def test_host_api_and_other_sandboxes_are_unreachable(
    own_server: ServerProcess, gsb: Sandbox
) -> None:
    other = Sandbox.create(base_url=own_server.url, api_key=own_server.api_key, runtime="runc")
    try:
        p = other.start_process("python3 -m http.server 8000")
        p.wait_for_port(8000, timeout=30)
        other_ip = str(ipaddress.IPv4Address(_gateway(own_server, other)) + 1)
        assert _connect(other, "AF_INET", "127.0.0.1", 8000) == "connected"  # the probe works
        # Another sandbox, the API on the host's side of the veth, and on the host's loopback
        # (which is not the sandbox's loopback).
        for host, port in [
            (other_ip, 8000),
            (_gateway(own_server, gsb), own_server.port),
            ("127.0.0.1", own_server.port),
        ]:
            assert _connect(gsb, "AF_INET", host, port).startswith("refused"), (host, port)
    finally:
        other.destroy()


def test_a_planted_socket_does_not_capture_the_host(
    own_server: ServerProcess, gsb: Sandbox
) -> None:
    """Sandbox code binds its own listener where the agent's socket once was; a restarted
    server still reaches the real agent, and the impostor never sees a connection."""
    planted = (
        "python3 -c 'import socket\n"
        's = socket.socket(socket.AF_UNIX); s.bind("/.hutch/sock/agent.sock"); s.listen()\n'
        'print("listening", flush=True)\n'
        'c, _ = s.accept(); open("/tmp/captured", "w").write("yes")\''
    )
    p = gsb.start_process(planted)
    p.wait_for_log("listening", timeout=30)
    own_server.kill9()
    own_server.start()
    r = gsb.exec("cat /tmp/captured 2>/dev/null; echo done")
    assert r.stdout == "done\n"
    assert gsb.get_process(p.id).status == "running"  # the impostor is still waiting
    p.kill()


def test_pause_resume_stop_start(own_server: ServerProcess) -> None:
    box = Sandbox.create(base_url=own_server.url, api_key=own_server.api_key, runtime="gvisor")
    try:
        box.write_file("/workspace/kept.txt", "kept")
        box.exec("sleep 300 >/dev/null 2>&1 &")
        box.pause()
        assert box.info().status == "paused"
        box.resume()
        assert "sleep 300" in box.exec("ps ax").stdout  # memory and processes were kept
        box.stop()
        assert box.info().status == "stopped"
        box.start()
        assert box.read_file("/workspace/kept.txt", text=True) == "kept"
        assert "sleep 300" not in box.exec("ps ax").stdout
    finally:
        box.destroy()


def test_a_bucket_mounts_even_over_a_directory_the_sandbox_has_seen(
    gsb: Sandbox, s3: S3Server
) -> None:
    """The host's mount reaches the gofer (its root is a slave of the shared rootfs) and the
    sentry revalidates what it cached (--file-access=shared): the bucket shows over a
    directory the sandbox had listed, and unmounting brings back what was under it."""
    s3.make_bucket("gdata")
    s3.put("gdata/hello.txt", "from s3")
    assert gsb.exec("mkdir -p /mnt/gdata && touch /mnt/gdata/under && ls /mnt/gdata").stdout == (
        "under\n"
    )
    gsb.mount_bucket("gdata", "/mnt/gdata", s3.endpoint, s3.credentials)
    assert gsb.exec("cat /mnt/gdata/hello.txt").stdout == "from s3"
    assert gsb.exec("ls /mnt/gdata").stdout == "hello.txt\n"
    assert gsb.exec("echo back > /mnt/gdata/up.txt && cat /mnt/gdata/up.txt").stdout == "back\n"
    assert _in_bucket(s3, "gdata/up.txt", "back\n")
    gsb.unmount_bucket("/mnt/gdata")
    assert gsb.exec("ls /mnt/gdata").stdout == "under\n"


def test_coreutils_stat_works(gsb: Sandbox) -> None:
    """coreutils 9 passes AT_NO_AUTOMOUNT, which this runsc refuses: the preload drops it."""
    r = gsb.exec("ls -l /etc/passwd && stat -c '%U %a' /etc/passwd")
    assert r.exit_code == 0, r.stderr
    assert " root root " in r.stdout and r.stdout.endswith("root 644\n")
    # Even where the program asks for a flush (tcsetattr TCSAFLUSH, as top and less do).
    t = gsb.terminal()
    try:
        t.send(
            "python3 -c 'import termios as t; "
            't.tcsetattr(0, t.TCSAFLUSH, t.tcgetattr(0)); print("set-" + "ok")\'\n'
        )
        t.read_until(b"set-ok")
    finally:
        t.close()


def test_ctrl_c_and_resize_reach_the_foreground_job(gsb: Sandbox) -> None:
    """This runsc's tty sends no signal for ^C or a resize: the terminal's leader does."""
    t = gsb.terminal(cols=80, rows=24)
    try:
        t.send(
            "python3 -c 'import os, signal; signal.signal(signal.SIGWINCH, lambda *a: "
            'print("win", *os.get_terminal_size(0), sep="-", flush=True)); '
            'print("rea" "dy", flush=True); signal.pause()\'\n'
        )
        t.read_until(b"ready")
        t.resize(100, 30)
        t.read_until(b"win-100-30")  # and that Python ends (pause() returns)
        t.send("echo sl''eeping; sleep 1000\n")
        t.read_until(b"sleeping")
        time.sleep(0.5)
        t.send(b"\x03")
        t.send("echo after-$?\n")
        t.read_until(b"after-130")
    finally:
        t.close()


def test_a_fork_bomb_leaves_the_agent_and_its_limit_cannot_be_lifted(
    own_server: ServerProcess,
) -> None:
    box = Sandbox.create(
        base_url=own_server.url, api_key=own_server.api_key, runtime="gvisor", pids_limit=64
    )
    try:
        born = box.exec("cut -d' ' -f22 /proc/1/stat").stdout
        with pytest.raises(CommandTimeout):
            box.exec("bomb() { bomb | bomb & }; bomb; sleep 30", timeout=3)
        # The very next exec forks (bash, then its pipeline): the agent kept its reserve.
        after = box.exec("echo a | tr a b")
        assert (after.exit_code, after.stdout) == (0, "b\n")
        assert box.exec("cut -d' ' -f22 /proc/1/stat").stdout == born
        # The limit is a hard one: even root inside cannot raise it again.
        lift = box.exec(
            "python3 -c 'import resource as r; r.setrlimit(r.RLIMIT_NPROC, (10**6, 10**6))'"
        )
        assert lift.exit_code != 0 and "raise maximum limit" in lift.stderr, lift.stderr
    finally:
        box.destroy()


# Many files made, read and removed: thousands of dentries and gofer handles come and go.
_FILE_WORK = """
import os
for i in range(400):
    p = f"/tmp/work/{i % 40}"
    os.makedirs(p, exist_ok=True)
    with open(f"{p}/f{i}", "w") as f:
        f.write("x" * i)
    with open(f"{p}/f{i}") as f:
        f.read()
    os.stat(p)
    if i % 3:
        os.unlink(f"{p}/f{i}")
"""


def test_a_file_closed_in_a_long_used_sandbox_reaches_the_bucket_at_once(
    gsb: Sandbox, s3: S3Server
) -> None:
    """rclone uploads after the host's last close. The sentry queues the gofer's closes and
    sends them 100 at a time, so a closed file stayed open on the host until about a hundred
    more files were closed in the sandbox. The agent sends the queue while a writable bucket
    is mounted: after a process ends, an op, and every 0.25 s for processes still running.
    This sandbox has run the tests above; more file work first, then each write is checked
    with nothing else happening in the sandbox."""
    s3.make_bucket("gused")
    gsb.mount_bucket("gused", "/mnt/gused", s3.endpoint, s3.credentials)
    try:
        gsb.write_file("/tmp/work.py", _FILE_WORK)
        for round_ in range(3):
            assert (
                gsb.exec("python3 /tmp/work.py && ls -lR /tmp/work /etc >/dev/null").exit_code == 0
            )
            for i in range(5):
                gsb.write_file(f"/workspace/w{i}", "y")
                gsb.read_file(f"/workspace/w{i}")
            # A command's file (closed when the command exits).
            gsb.exec(f"echo round-{round_} > /mnt/gused/cmd{round_}.txt")
            assert _in_bucket(s3, f"gused/cmd{round_}.txt", f"round-{round_}\n"), round_
        # A file written through the files API (the agent itself closes it).
        gsb.write_file("/mnt/gused/api.txt", "through the api")
        assert _in_bucket(s3, "gused/api.txt", "through the api")
        # A process that closes its file and keeps running (no exit to flush after).
        p = gsb.start_process(
            "python3 -c \"import time; open('/mnt/gused/kept.txt', 'w').write('still running'); "
            "print('closed', flush=True); time.sleep(120)\""
        )
        p.wait_for_log("closed", timeout=30)
        assert _in_bucket(s3, "gused/kept.txt", "still running")
        assert gsb.get_process(p.id).status == "running"
        p.kill()
    finally:
        gsb.unmount_bucket("/mnt/gused")
