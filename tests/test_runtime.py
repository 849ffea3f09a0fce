"""The host-side runtime against real runc containers: create, lock-down, destroy, sweep, restart.

Each test has its own HUTCH_HOME (with its own small btrfs pool) and a busybox image. The agent
is a stand-in that echoes on its inherited socket, so these tests hold for the runtime alone; one
test boots the real agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.agent import AGENT_VERSION
from hutch.node import AgentConnection
from hutch.node._deaths import InitWatch
from hutch.runtime import (
    HOST_ID_BASE,
    Image,
    ImageStore,
    Limits,
    Runtime,
    RuntimeConfig,
    SandboxExists,
    SandboxMissing,
    SandboxSpec,
    SandboxStartError,
)
from hutch.runtime.container import _cgroups
from hutch.runtime.container._cgroups import cgroup_name
from hutch.runtime.container._mounts import umount
from hutch.runtime.container._oci import Mount, Spec
from hutch.runtime.container._uid_ranges import FIRST_BASE
from hutch.runtime.container._workcgroup import AGENT_MEMORY_RESERVE_MB, AGENT_PIDS_RESERVE
from tests.support.busybox import add_busybox_image
from tests.support.echo_agent import echo_agent_package

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hutch-rt-", dir="/var/tmp"))
    os.chmod(path, 0o711)  # sandbox root, an unprivileged host uid, traverses to its rootfs
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def echo_agent(workdir: Path) -> Path:
    """A `hutch` package tree whose agent echoes whatever it is sent."""
    return echo_agent_package(workdir)


@pytest.fixture(scope="module")
def image(workdir: Path) -> Image:
    return add_busybox_image(ImageStore(workdir / "images"))


@pytest.fixture()
async def runtime(workdir: Path, echo_agent: Path) -> AsyncIterator[Runtime]:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    rt = Runtime(RuntimeConfig(home=home, storage_size_gb=4, agent_package=echo_agent))
    await rt.setup()
    yield rt
    await rt.sweep(keep=())
    await rt.teardown()
    assert not (home / "storage").is_mount(), "the empty pool stays mounted"


def spec(image: Image, sandbox_id: str, **limits: Any) -> SandboxSpec:
    return SandboxSpec(id=sandbox_id, image=image, env={"GREETING": "hi"}, limits=Limits(**limits))


def runc(rt: Runtime, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = rt.config.home
    return subprocess.run(
        ["runc", "--root", str(home / "runc"), *args], capture_output=True, text=True, check=check
    )


def sh(rt: Runtime, sandbox_id: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in the sandbox, as its agent would run a command."""
    return runc(rt, "exec", sandbox_id, "sh", "-c", script, check=False)


def init_pid(rt: Runtime, sandbox_id: str) -> int:
    import json

    return int(json.loads(runc(rt, "state", sandbox_id).stdout)["pid"])


def echo(socket_path: Path, payload: bytes = b"ping") -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(socket_path))
        s.sendall(payload)
        return s.recv(len(payload))


def leftovers(rt: Runtime, sandbox_id: str) -> list[str]:
    """Every trace of the sandbox on the host."""
    home = rt.config.home
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if f"/{sandbox_id}/" in line or line.split()[4].endswith(f"/{sandbox_id}"):
            found.append(f"mount {line.split()[4]}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if any(
            (hierarchy / c).exists()
            for c in (cgroup_name(home, sandbox_id), rt.cgroups.of(sandbox_id))
        ):
            found.append(f"cgroup {hierarchy.name}")
    for path in (home / "runc" / sandbox_id, home / "sandboxes" / sandbox_id):
        if path.exists():
            found.append(str(path))
    if (home / "storage" / sandbox_id).exists():
        found.append("subvolume")
    return found


def text(path: str | Path) -> str:
    return Path(path).read_text()


def btrfs(*args: str) -> str:
    return subprocess.run(["btrfs", *args], capture_output=True, text=True, check=True).stdout


def kill_and_wait(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, 9)
    for pid in pids:
        while _proc_state(pid) not in ("Z", "gone"):
            time.sleep(0.005)


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid")))
        chain.append(pid)
    return chain


async def test_create_runs_the_agent_locked_down(runtime: Runtime, image: Image) -> None:
    sock = await runtime.create(spec(image, "lock", cpu=0.5, memory_mb=256, swap_mb=64, pids=99))
    assert sock == runtime.agent_socket("lock")
    assert echo(sock) == b"ping"
    assert await runtime.state("lock") == "running"
    assert (await runtime.list_sandboxes())["lock"] == "running"

    pid = init_pid(runtime, "lock")
    # Not a child (nor any descendant) of ours, nor in our session: killing us leaves it alone.
    assert os.getpid() not in ancestors(pid)
    assert os.getsid(pid) != os.getsid(0)
    # Its own host uid range (the default), which owns its rootfs as it sees it.
    base = (runtime.config.home / "sandboxes" / "lock" / "rootfs").stat().st_uid
    assert base >= FIRST_BASE > HOST_ID_BASE and (base - FIRST_BASE) % 65536 == 0
    assert text(f"/proc/{pid}/uid_map").split() == ["0", str(base), "65536"]
    assert text(f"/proc/{pid}/gid_map").split() == ["0", str(base), "65536"]
    status = dict(line.split(":\t", 1) for line in text(f"/proc/{pid}/status").splitlines())
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    assert int(status["CapEff"], 16) & (1 << 21) == 0  # no CAP_SYS_ADMIN
    # PID 1 is the agent; its stdio goes nowhere on the host, fd 3 is its socket.
    assert "hutch.agent.__main__" in text(f"/proc/{pid}/cmdline")
    assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
    assert os.readlink(f"/proc/{pid}/fd/3").startswith("socket:")
    environ = text(f"/proc/{pid}/environ").split("\0")
    assert "GREETING=hi" in environ and "PYTHONHOME=/.hutch/python" in environ
    assert "HOME=/root" in environ  # from the image's config

    cgroups = Path("/sys/fs/cgroup")
    # The sandbox as a whole has the limits asked for; user code (in `work`) has them less
    # the agent's reserve, so it can never take the agent's memory or pids.
    name = cgroup_name(runtime.config.home, "lock")  # hutch/<home tag>/lock
    whole = cgroups / "memory" / name
    work = whole / "work"
    assert int(text(whole / "memory.limit_in_bytes")) == 256 << 20
    assert int(text(whole / "memory.memsw.limit_in_bytes")) == 320 << 20
    assert text(cgroups / "pids" / name / "pids.max") == "99\n"
    assert int(text(work / "memory.limit_in_bytes")) == (256 - AGENT_MEMORY_RESERVE_MB) << 20
    assert int(text(work / "memory.memsw.limit_in_bytes")) == (320 - AGENT_MEMORY_RESERVE_MB) << 20
    assert text(cgroups / "pids" / name / "work/pids.max") == f"{99 - AGENT_PIDS_RESERVE}\n"
    assert text(cgroups / "cpu" / name / "cpu.cfs_quota_us") == "50000\n"
    # The agent holds work's cgroup.procs open (fds 4, 5); nothing of the agent is in work.
    assert os.readlink(f"/proc/{pid}/fd/4") == str(work / "cgroup.procs")
    assert os.readlink(f"/proc/{pid}/fd/5") == str(cgroups / "pids" / name / "work/cgroup.procs")
    assert str(pid) not in text(work / "cgroup.procs").split()


async def test_inside_the_sandbox_root_is_fenced_in(runtime: Runtime, image: Image) -> None:
    await runtime.create(spec(image, "fence"))
    fence_base = (runtime.config.home / "sandboxes" / "fence" / "rootfs").stat().st_uid
    assert fence_base >= FIRST_BASE
    checks = {
        "id -u": "0",
        "hostname": "sandbox",
        "cat /proc/self/uid_map | tr -s ' '": f" 0 {fence_base} 65536",
        "mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused": "refused",
        # Refused by the kernel, not missing: a lacking `unshare` binary must not pass.
        "unshare -U true 2>&1 | grep -c 'Operation not permitted'": "1",
        "unshare -m true 2>&1 | grep -c 'Operation not permitted'": "1",
        "head -c 64 /proc/kcore | wc -c": "0",
        "echo 1 2>/dev/null > /proc/sys/kernel/sysrq && echo wrote || echo refused": "refused",
        "echo h 2>/dev/null > /proc/sysrq-trigger && echo wrote || echo refused": "refused",
        "touch /.hutch/code/x 2>/dev/null && echo wrote || echo refused": "refused",
        "mknod /tmp/sda b 8 0 2>/dev/null && echo made || echo refused": "refused",
        "ls /dev | tr '\\n' ' '": (
            "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
        ),
        "grep -c : /proc/net/dev": "2",  # lo and eth0 (its veth to the host)
        "cat /proc/1/cmdline | tr '\\0' ' ' | grep -c hutch.agent": "1",
        "test -d /workspace && echo yes": "yes",
        "grep -c 127.0.0.53 /etc/resolv.conf": "0",
    }
    for script, expected in checks.items():
        result = sh(runtime, "fence", script)
        assert result.stdout.strip() == expected.strip(), (script, result.stdout, result.stderr)


async def test_destroy_leaves_nothing(runtime: Runtime, image: Image) -> None:
    await runtime.create(spec(image, "gone"))
    sh(runtime, "gone", "dd if=/dev/zero of=/workspace/f bs=1M count=4 2>/dev/null")
    sh(runtime, "gone", "sleep 1000 >/dev/null 2>&1 & sleep 1000 >/dev/null 2>&1 &")
    assert leftovers(runtime, "gone")
    await runtime.destroy("gone")
    assert leftovers(runtime, "gone") == []
    assert await runtime.state("gone") == "missing"
    assert "gone" not in await runtime.list_sandboxes()
    await runtime.destroy("gone")  # idempotent
    # The subvolume's quota group goes too, once btrfs has cleaned the subvolume up.
    storage = str(runtime.config.home / "storage")
    btrfs("filesystem", "sync", storage)  # commits, and wakes the cleaner
    btrfs("subvolume", "sync", storage)  # waits until the cleaner has dropped the subvolume
    # The kernel removes the dropped subvolume's qgroup in a later transaction: commit again,
    # and give it a few commits under load.
    for _ in range(20):
        btrfs("filesystem", "sync", storage)
        qgroups = btrfs("qgroup", "show", storage)
        if "<stale>" not in qgroups:
            break
        await asyncio.sleep(0.25)
    assert [line for line in qgroups.splitlines() if line.startswith("0/")] == [
        line for line in qgroups.splitlines() if line.startswith("0/5 ")
    ]


async def test_destroy_of_a_paused_sandbox(runtime: Runtime, image: Image) -> None:
    await runtime.create(spec(image, "frozen"))
    await runtime.pause("frozen")
    assert await runtime.state("frozen") == "paused"
    await runtime.destroy("frozen")
    assert leftovers(runtime, "frozen") == []


async def test_failed_create_rolls_back_everything(
    runtime: Runtime, image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bind mount whose source is missing: runc fails after the overlay, the subvolume, the
    # cgroups (user code's `work` included) and the bundle were made; a real runc failure.
    spec_for = runtime._spec_for

    def with_missing_mount(*args: Any) -> Spec:
        missing = Mount.bind(Path("/nonexistent/hutch-test"), "/mnt/missing", readonly=True)
        made = spec_for(*args)
        return dataclasses.replace(made, mounts=(*made.mounts, missing))

    monkeypatch.setattr(runtime, "_spec_for", with_missing_mount)
    with pytest.raises(SandboxStartError, match="(?i)no such file or directory"):
        await runtime.create(spec(image, "nomount"))
    monkeypatch.undo()
    assert leftovers(runtime, "nomount") == []
    # Bad specs are refused before anything is made for them.
    bad_env = SandboxSpec(id="badenv", image=image, env={"A=B": "x"}, limits=Limits())
    bad_hostname = SandboxSpec(id="badhost", image=image, env={}, limits=Limits(), hostname="a b")
    for bad in (bad_env, bad_hostname, spec(image, "nodisk", disk_mb=0), spec(image, "Not_An_Id")):
        with pytest.raises(ValueError):
            await runtime.create(bad)
        assert leftovers(runtime, bad.id) == []


async def test_create_works_under_a_strict_umask(runtime: Runtime, image: Image) -> None:
    # A server started with UMask=0077 must still give the sandbox's root (an unprivileged
    # host uid) its way to its rootfs and etc files.
    old = os.umask(0o077)
    try:
        sock = await runtime.create(spec(image, "umask"))
    finally:
        os.umask(old)
    assert echo(sock) == b"ping"
    assert sh(runtime, "umask", "cat /etc/hostname").stdout == "sandbox\n"


async def test_create_of_an_existing_id_keeps_the_existing_sandbox(
    runtime: Runtime, image: Image
) -> None:
    sock = await runtime.create(spec(image, "twice"))
    with pytest.raises(SandboxExists):
        await runtime.create(spec(image, "twice"))
    assert echo(sock) == b"ping"


async def test_sweep_removes_leftovers_and_keeps_the_rest(runtime: Runtime, image: Image) -> None:
    await runtime.create(spec(image, "keep"))
    await runtime.create(spec(image, "stray"))
    # As if the server died mid-create and runc's state was lost: empty cgroups, the rootfs
    # mount, the subvolume and the bundle dir remain, with no container.
    await runtime.create(spec(image, "half"))
    kill_and_wait([init_pid(runtime, "half")])
    shutil.rmtree(runtime.config.home / "runc" / "half")
    # And a subvolume with nothing else.
    btrfs("-q", "subvolume", "create", str(runtime.config.home / "storage/orphan"))
    assert leftovers(runtime, "half")

    removed = await runtime.sweep(keep={"keep"})

    assert removed == ["half", "orphan", "stray"]
    for sandbox_id in removed:
        assert leftovers(runtime, sandbox_id) == []
    assert await runtime.state("keep") == "running"
    assert echo(runtime.agent_socket("keep")) == b"ping"


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


async def test_start_existing_after_a_reboot_keeps_the_writable_layer(
    runtime: Runtime, image: Image
) -> None:
    sandbox = spec(image, "reboot")
    await runtime.create(sandbox)
    result = sh(runtime, "reboot", "echo kept > /workspace/f && echo 10.1.2.3 db >> /etc/hosts")
    assert result.returncode == 0, result.stderr
    # A host reboot: every process dies, mounts vanish, runc's state goes stale.
    home = runtime.config.home
    procs = (
        Path("/sys/fs/cgroup/pids") / cgroup_name(runtime.config.home, "reboot") / "cgroup.procs"
    )
    kill_and_wait([int(p) for p in text(procs).split()])
    assert umount(home / "sandboxes/reboot/rootfs")
    assert umount(home / "storage")
    await runtime.setup()  # what the server does first on start
    assert await runtime.state("reboot") == "stopped"

    sock = await runtime.start_existing(sandbox)

    assert echo(sock) == b"ping"
    assert await runtime.state("reboot") == "running"
    assert sh(runtime, "reboot", "cat /workspace/f").stdout == "kept\n"
    assert "10.1.2.3 db" in sh(runtime, "reboot", "cat /etc/hosts").stdout
    # Starting a running sandbox again changes nothing.
    pid = init_pid(runtime, "reboot")
    assert await runtime.start_existing(sandbox) == sock
    assert init_pid(runtime, "reboot") == pid
    with pytest.raises(SandboxMissing):
        await runtime.start_existing(spec(image, "never-was"))


async def test_disk_fill_stops_at_the_limit(runtime: Runtime, image: Image) -> None:
    await runtime.create(spec(image, "full", disk_mb=64))
    host_free = shutil.disk_usage(runtime.config.home).free
    # /tmp is on the writable layer too: the quota covers it.
    result = sh(runtime, "full", "dd if=/dev/zero of=/tmp/fill bs=1M count=256 2>&1; sync")
    assert "Disk quota exceeded" in result.stdout, result.stdout
    written = int(sh(runtime, "full", "stat -c %s /tmp/fill").stdout)
    assert 32 << 20 < written <= 64 << 20
    assert host_free - shutil.disk_usage(runtime.config.home).free < 128 << 20
    # Freeing space makes the sandbox usable again.
    assert sh(runtime, "full", "rm /tmp/fill && echo ok > /tmp/after && cat /tmp/after").stdout == (
        "ok\n"
    )


async def test_the_real_agent_boots_in_a_bare_busybox(workdir: Path, image: Image) -> None:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    rt = Runtime(RuntimeConfig(home=home, storage_size_gb=4))
    await rt.setup()
    try:
        sock = await rt.create(spec(image, "real"))
        # The runtime made the socket itself: only an answer proves the agent inside serves it.
        async with await AgentConnection.connect(sock, timeout=30) as conn:
            pong = await asyncio.wait_for(conn.call("ping"), 30)
            # Any op but ping runs after the agent's deferred start-up (its title included).
            await asyncio.wait_for(conn.call("process_list"), 30)
        assert pong["version"] == AGENT_VERSION, pong
        assert pong["pid"] == 1  # the agent is the sandbox's init, not a stand-in beside it
        assert await rt.state("real") == "running", (home / "sandboxes/real/runc.log").read_text()
        # ps and top show its name, not the loader's command line it was started with.
        pid = init_pid(rt, "real")
        assert text(f"/proc/{pid}/cmdline") == "hutch-agent\0"
        assert text(f"/proc/{pid}/comm") == "hutch-agent\n"
    finally:
        await rt.sweep(keep=())
        await rt.teardown()


@pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc is not installed")
async def test_a_gvisor_sandbox_whose_sentry_ends_before_its_agent_listens_boots_again(
    workdir: Path, image: Image, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sentry that died during its first boot (seen, unexplained, under load) costs a second
    boot, not the create: here the first boot's sandbox is killed before its agent listens."""
    from hutch.runtime.container import _gvisor

    real_boot = _gvisor.GvisorSandboxes._boot
    boots: list[int] = []

    async def boot_then_kill_the_first(self: Any, runsc: Any, sandbox_id: str, *a: Any) -> None:
        await real_boot(self, runsc, sandbox_id, *a)
        state = runsc.state(sandbox_id)
        boots.append(state.pid)
        if len(boots) == 1:
            os.kill(state.pid, signal.SIGKILL)
            while runsc.state(sandbox_id).status != "stopped":  # noqa: ASYNC110 - a file to poll
                await asyncio.sleep(0.01)

    monkeypatch.setattr(_gvisor.GvisorSandboxes, "_boot", boot_then_kill_the_first)
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    rt = Runtime(RuntimeConfig(home=home, storage_size_gb=4))
    await rt.setup()
    try:
        sock = await rt.create(dataclasses.replace(spec(image, "again"), runtime="gvisor"))
        async with await AgentConnection.connect(sock, timeout=30) as conn:
            assert (await asyncio.wait_for(conn.call("ping"), 30))["pid"] == 1
        assert len(boots) == 2 and boots[0] != boots[1]
        assert "exited before it listened" in caplog.text and "booting it again" in caplog.text
    finally:
        await rt.sweep(keep=())
        await rt.teardown()


def _hierarchies_with(cgroup: str) -> list[str]:
    return [h for h in os.listdir("/sys/fs/cgroup") if Path("/sys/fs/cgroup", h, cgroup).exists()]


async def test_a_sandbox_of_another_home_with_the_same_id_is_never_touched(
    runtime: Runtime, image: Image, workdir: Path, echo_agent: Path
) -> None:
    """Two homes on one host (nodes on one machine, servers side by side) and one sandbox id
    in both (a user's choice, or a sandbox moved between nodes): the other home's destroy,
    pause and sweep leave this one running, its processes included."""
    other_home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    other = Runtime(RuntimeConfig(home=other_home, storage_size_gb=4, agent_package=echo_agent))
    await other.setup()
    try:
        await runtime.create(spec(image, "twin"))
        sh(runtime, "twin", "sleep 1000 >/dev/null 2>&1 &")
        await other.create(spec(image, "twin"))
        assert runtime.cgroups.of("twin") != other.cgroups.of("twin")
        await other.pause("twin")
        assert await runtime.state("twin") == "running"
        await other.destroy("twin")
        await other.create(spec(image, "twin"))
        assert await other.sweep(keep=()) == ["twin"]
        assert await runtime.state("twin") == "running"
        assert "sleep 1000" in sh(runtime, "twin", "ps -o args").stdout
        assert (await runtime.usage("twin", disk=False)).pids >= 2
    finally:
        await other.sweep(keep=())
        await other.teardown()
        parent = _cgroups.home_cgroup_parent(other_home)
        shutil.rmtree(other_home, ignore_errors=True)
    # The other home's teardown took its (empty) parent cgroups with it.
    assert _hierarchies_with(parent) == []


async def test_a_sandbox_made_with_the_flat_cgroup_of_older_versions_is_still_handled(
    runtime: Runtime, image: Image, echo_agent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgrade: a sandbox made before homes had a cgroup parent of their own (`hutch/<id>`)
    and still running is paused, measured and destroyed by the new version's runtime."""
    with monkeypatch.context() as m:
        m.setattr(_cgroups, "cgroup_name", lambda home, sandbox_id: f"hutch/{sandbox_id}")
        await runtime.create(spec(image, "old"))
    flat = [Path("/sys/fs/cgroup", h, "hutch", "old") for h in os.listdir("/sys/fs/cgroup")]
    assert any(d.is_dir() for d in flat)
    sh(runtime, "old", "sleep 1000 >/dev/null 2>&1 &")
    # A restarted server: a new runtime on the same home, which has not seen it made.
    upgraded = Runtime(RuntimeConfig(home=runtime.config.home, storage_size_gb=4,
                                     agent_package=echo_agent))  # fmt: skip
    await upgraded.setup()
    assert upgraded.cgroups.of("old") == "hutch/old"
    assert (await upgraded.usage("old", disk=False)).pids >= 2
    await upgraded.pause("old")
    assert await upgraded.state("old") == "paused"
    await upgraded.resume("old")
    await upgraded.destroy("old")
    assert leftovers(upgraded, "old") == []
    assert not any(d.exists() for d in flat)


async def test_a_stop_seen_by_another_processs_death_watch_is_no_death(
    runtime: Runtime, image: Image
) -> None:
    """Another API replica on this home (or on a node, the watch the other replica asks)
    sees the init of a sandbox this one stops end, outside this one's lock: not a death. It
    was `agent_exited` ("killed from outside"), and the stop then failed with a 409. An init
    killed from outside still is one."""
    await runtime.create(spec(image, "halt"))
    watch = InitWatch(runtime)
    try:
        assert await watch.dead(["halt"]) == {}
        await runtime.stop("halt")
        assert await watch.dead(["halt"]) == {}
        assert await watch.dead(["halt"]) == {}
        await runtime.start_existing(spec(image, "halt"))
        assert await watch.dead(["halt"]) == {}
        os.kill(init_pid(runtime, "halt"), signal.SIGKILL)
        for _ in range(100):
            if found := await watch.dead(["halt"]):
                break
            await asyncio.sleep(0.05)
        assert found["halt"].startswith("agent_exited"), found
    finally:
        watch.close()
