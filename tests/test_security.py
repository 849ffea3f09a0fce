"""Untrusted code as root inside a sandbox tries to break out; every attempt must fail safely.

Each test says what it tried. The sandbox's root is an unprivileged uid on the host (user
namespace), under seccomp, with a reduced capability set and masked /proc paths.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hutch import CommandTimeout, Sandbox, SandboxUnavailable
from hutch.runtime.container._cgroups import cgroup_name
from hutch.runtime.container._gvisor import PID_MAX, host_tasks_limit
from tests._server import TEST_RUNTIME, ServerProcess

pytestmark = pytest.mark.sandbox

GVISOR = TEST_RUNTIME == "gvisor"

# Calls syscall(args) from Python in the sandbox and prints "<return value> <errno>".
SYSCALL = (
    "python3 -c 'import ctypes; l=ctypes.CDLL(None,use_errno=True); "
    "r=l.syscall({args}); print(r, ctypes.get_errno())'"
)


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Sandbox:
    box = Sandbox.create(
        base_url=server.url, api_key=server.api_key, memory_mb=256, disk_mb=256, pids_limit=128
    )
    yield box
    box.destroy()


def test_is_root_inside_but_not_on_the_host(sb: Sandbox) -> None:
    assert sb.exec("id -u").stdout == "0\n"
    if GVISOR:
        # No host process runs sandbox code at all: its kernel is gVisor's sentry.
        assert "gVisor" in sb.exec("dmesg").stdout
        return
    # uid 0 inside maps to an unprivileged host uid: the map must not start at host 0.
    uid_map = sb.exec("cat /proc/self/uid_map").stdout.split()
    assert uid_map[0] == "0" and int(uid_map[1]) >= 100000


def test_mount_is_refused(sb: Sandbox) -> None:
    r = sb.exec("mkdir -p /tmp/m && mount -t tmpfs none /tmp/m")
    assert r.exit_code != 0
    assert "tmpfs /tmp/m" not in sb.exec("cat /proc/mounts").stdout


def test_unshare_user_namespace_is_refused(sb: Sandbox) -> None:
    # Positive control: the binary is there and runs, so a refusal below is the kernel's.
    assert sb.exec("unshare --help >/dev/null && echo present").stdout == "present\n"
    if GVISOR:
        # gVisor implements user namespaces itself: the new one is the sentry's, and what
        # its "root" may do never reaches the host kernel.
        assert "gVisor" in sb.exec("unshare -r dmesg").stdout
        return
    r = sb.exec("unshare -r id -u")
    assert r.exit_code != 0, r.stdout
    assert "Operation not permitted" in r.stderr, r.stderr


def test_keyctl_and_bpf_syscalls_are_blocked(sb: Sandbox) -> None:
    # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1): syscall 250 on x86_64
    # (gVisor has no keyrings and refuses bpf itself: EACCES or ENOSYS.)
    refusals = (["-1", "1"], ["-1", "13"], ["-1", "38"]) if GVISOR else (["-1", "1"],)
    r = sb.exec(SYSCALL.format(args="250, 0, -3, 1"))
    assert r.stdout.split() in refusals, f"keyctl was not refused with EPERM: {r.stdout}"
    # bpf(BPF_PROG_LOAD, NULL, 0): syscall 321
    r = sb.exec(SYSCALL.format(args="321, 5, 0, 0"))
    assert r.stdout.split() in refusals, f"bpf was not refused with EPERM: {r.stdout}"


def test_sandbox_root_cannot_read_the_agents_environ_or_fds(sb: Sandbox) -> None:
    # The agent is non-dumpable (it holds the sandbox's secrets): root in the sandbox, without
    # CAP_SYS_PTRACE, cannot read it through /proc/1, although both run as the same uid.
    if GVISOR:
        # The sentry's /proc lets its root read PID 1 whatever the flag (so it did before
        # the agent deferred setting it): an open limit, docs/security.md (gVisor).
        pytest.skip("gVisor's /proc does not honour PR_SET_DUMPABLE")
    for command in ("cat /proc/1/environ", "readlink -v /proc/1/fd/0"):
        r = sb.exec(command)
        assert r.exit_code != 0 and "Permission denied" in r.stderr, (command, r.stderr)
    # The positive control: the same reads of a process of its own work.
    r = sb.exec("sleep 30 & cat /proc/$!/environ >/dev/null && readlink -v /proc/$!/fd/0; kill $!")
    assert r.exit_code == 0, r.stderr


def test_ptrace_of_a_host_process_fails(sb: Sandbox) -> None:
    # The host's PID 1 and this test's own pid are not visible in the sandbox's pid namespace.
    for pid in (1, os.getpid()):
        r = sb.exec(SYSCALL.format(args=f"101, 16, {pid}, 0, 0"))  # ptrace(PTRACE_ATTACH)
        ret, errno = r.stdout.split()
        assert ret == "-1" and errno in {"1", "3"}, r.stdout  # EPERM or ESRCH
    cmdline = sb.exec("cat /proc/1/cmdline | tr '\\0' ' '").stdout
    # (gVisor shows the argv as exec'd: the agent's retitle does not reach its /proc.)
    assert cmdline == "hutch-agent " or (GVISOR and "hutch.agent" in cmdline), cmdline


def test_block_device_cannot_be_made_or_read(sb: Sandbox) -> None:
    r = sb.exec("mknod /tmp/disk b 8 0 && head -c 512 /tmp/disk | wc -c")
    assert r.exit_code != 0 or r.stdout.strip() == "0"
    r = sb.exec("ls /dev")
    assert "sda" not in r.stdout.split() and "vda" not in r.stdout.split()


def test_proc_sys_and_sysrq_are_read_only(sb: Sandbox) -> None:
    assert sb.exec("echo 1 > /proc/sys/kernel/sysrq").exit_code != 0
    assert sb.exec("echo h > /proc/sysrq-trigger").exit_code != 0
    assert sb.exec("echo 0 > /proc/sys/vm/overcommit_memory").exit_code != 0


def test_proc_kcore_is_masked(sb: Sandbox) -> None:
    r = sb.exec("head -c 64 /proc/kcore | wc -c")
    assert r.stdout.strip() == "0"


def test_fork_bomb_is_contained(server: ServerProcess) -> None:
    opts = {"base_url": server.url, "api_key": server.api_key}
    bystander = Sandbox.create(**opts)
    bomb = Sandbox.create(pids_limit=64, **opts)
    pids = _pids_cgroup(server.home, bomb.id)
    try:
        # Under gVisor the host limit also counts the sentry's threads and ptrace stubs.
        expected = host_tasks_limit(64, int(PID_MAX.read_text())) if GVISOR else 64
        assert pids.joinpath("pids.max").read_text().strip() == str(expected)
        try:
            bomb.exec("bomb() { bomb | bomb & }; bomb; sleep 3", timeout=5)
        except CommandTimeout:
            pass  # a shell starved of pids may not finish in time: an outcome, not a failure
        if GVISOR:
            # No sandbox process is a host task: the sentry's RLIMIT_NPROC, set by the agent in
            # each child below its own, stopped the bomb before the sentry ran out of host
            # pids (which would end the sandbox), and the agent can still start a command.
            # NB: one that needs no fork of its own (`echo` is bash's builtin): the command's
            # forks share the bomb's per-uid budget, as under runc they share `work`, so a
            # pipeline waits on bash's `fork: retry` until the bomb frees a slot (0 to 5 s
            # here; once in 12 runs past bash's 15 s of retries: exit 254, no output).
            after = bomb.exec("echo alive", timeout=30)
            assert (after.exit_code, after.stdout) == (0, "alive\n")
            # The sentry never ran out of host tasks: had it, it would have panicked, ending
            # the sandbox and the agent's connection with it (3 runs in 24 at 24 per process).
            events = pids.joinpath("pids.events").read_text().splitlines()
            assert dict(line.split() for line in events)["max"] == "0"
        else:
            # The limit, not luck, stopped it: forks were refused at the maximum of user
            # code's cgroup (`work`, the sandbox's limit less the agent's reserve) or the
            # sandbox's own.
            refused = 0
            for cgroup in (pids, pids / "work"):
                if (cgroup / "pids.events").exists():
                    events = dict(
                        line.split() for line in (cgroup / "pids.events").read_text().splitlines()
                    )
                    refused += int(events["max"])
            assert refused > 0
        # The API and other sandboxes still answer while the bomb sandbox is saturated.
        assert bystander.exec("echo alive", timeout=30).stdout == "alive\n"
    finally:
        bomb.destroy()
        bystander.destroy()
    assert not pids.exists(), "the bomb's cgroup outlived its sandbox"


def _pids_cgroup(home: Path, sandbox_id: str) -> Path:
    """The host's pids cgroup of a (not pooled) sandbox: cgroup v1 or the unified v2 tree."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return root / cgroup_name(home, sandbox_id)
    return root / "pids" / cgroup_name(home, sandbox_id)


def test_memory_bomb_is_killed_inside_the_sandbox(server: ServerProcess, sb: Sandbox) -> None:
    bomb = "python3 -c 'b = bytearray(1024**3); b[::4096] = b\"x\" * (1024**3 // 4096)'"
    if GVISOR:
        # The cgroup OOM killer's victim is the sentry, which holds all of the sandbox's
        # memory: that sandbox ends (docs/security.md), its host and neighbours do not.
        box = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=256)
        try:
            with pytest.raises(SandboxUnavailable):
                box.exec(bomb)
            assert sb.exec("echo still here").stdout == "still here\n"
        finally:
            box.destroy()
        return
    r = sb.exec(bomb)
    assert r.exit_code == 137, (r.exit_code, r.stderr)  # SIGKILL by the cgroup OOM killer
    assert sb.exec("echo still here").stdout == "still here\n"


def test_disk_fill_stops_at_the_limit(sb: Sandbox) -> None:
    free_before = shutil.disk_usage("/var/lib").free
    r = sb.exec("dd if=/dev/zero of=/workspace/fill bs=1M count=1024 2>&1; sync")
    assert "Disk quota exceeded" in r.stdout or "No space left" in r.stdout, r.stdout
    # (Python's stat, not coreutils': `stat` fails under this runsc, docs/security.md.)
    size = "python3 -c 'import os; print(os.path.getsize(\"/workspace/fill\"))'"
    written = int(sb.exec(size).stdout)
    assert written <= 256 * 1024 * 1024
    assert free_before - shutil.disk_usage("/var/lib").free < 512 * 1024 * 1024
    sb.exec("rm -f /workspace/fill")
    assert sb.exec("echo ok > /workspace/after && cat /workspace/after").stdout == "ok\n"


def test_image_writes_do_not_leak_to_another_sandbox(server: ServerProcess, sb: Sandbox) -> None:
    assert sb.exec("echo tampered >> /etc/os-release && tail -1 /etc/os-release").stdout == (
        "tampered\n"
    )
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as other:
        assert "tampered" not in other.exec("cat /etc/os-release").stdout


def test_capabilities_are_reduced(sb: Sandbox) -> None:
    caps = sb.exec("grep CapEff /proc/self/status").stdout.split()[1]
    effective = int(caps, 16)
    cap_sys_admin, cap_net_admin, cap_sys_ptrace, cap_sys_module = 21, 12, 19, 16
    for cap in (cap_sys_admin, cap_net_admin, cap_sys_ptrace, cap_sys_module):
        assert not effective & (1 << cap), f"capability {cap} is effective"
    # prctl(PR_GET_NO_NEW_PRIVS): gVisor's /proc/self/status has no NoNewPrivs line.
    no_new_privs = "python3 -c 'import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'"
    assert sb.exec(no_new_privs).stdout == "1\n"
