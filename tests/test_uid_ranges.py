"""One host uid range per sandbox (issue 19, item 6): the allocator, and overlayfs over
idmapped views of one shared image, checked on this kernel with real mounts.

The abuse test: a process running as sandbox A's root owns none of sandbox B's files, cannot
write B's root directory and cannot signal B's processes; what either writes is stored in the
canonical range, which no process runs as.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox
from hutch.runtime import ImageStore
from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE
from hutch.runtime.container._idmapped import make_userns, mount_idmapped
from hutch.runtime.container._mounts import umount
from hutch.runtime.container._overlay import mount_overlay, unmount_overlay
from hutch.runtime.container._uid_ranges import FIRST_BASE, UidRanges
from hutch.runtime.container._userns_cache import UsernsCache
from tests._server import SHARED_IMAGES, ServerProcess


def test_ranges_are_disjoint_kept_and_freed(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    one, two = UidRanges(tmp_path / "a", claims), UidRanges(tmp_path / "b", claims)
    bases = [one.allocate("sb-1"), one.allocate("sb-2"), two.allocate("sb-1")]
    assert len(set(bases)) == 3 and min(bases) >= FIRST_BASE > HOST_ID_BASE + ID_RANGE
    assert all((b - FIRST_BASE) % ID_RANGE == 0 for b in bases)
    # Kept: the same home gives the same range again (a restart), after a reboot too.
    assert UidRanges(tmp_path / "a", claims).allocate("sb-1") == bases[0]
    for claim in claims.iterdir():
        claim.unlink()  # /run is empty after a reboot
    assert UidRanges(tmp_path / "a", claims).allocate("sb-2") == bases[1]
    assert sorted(one.ids()) == ["sb-1", "sb-2"]  # what a sweep finds
    one.release("sb-1")
    assert one.get("sb-1") is None and one.ids() == ["sb-2"]
    assert two.allocate("sb-9") == bases[0]  # freed on destroy, handed out again


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mapping another uid range needs root")
async def test_a_ranges_user_namespace_is_made_ahead_and_kept() -> None:
    cache = UsernsCache(ahead=1)
    try:
        first = await cache.get(FIRST_BASE, ID_RANGE)
        assert await cache.get(FIRST_BASE, ID_RANGE) == first  # kept, not made again
        # The next range's is made while the first create goes on.
        for _ in range(500):
            if FIRST_BASE + ID_RANGE in cache._fds:
                break
            await asyncio.sleep(0.01)
        second = await cache.get(FIRST_BASE + ID_RANGE, ID_RANGE)
        assert second == cache._fds[FIRST_BASE + ID_RANGE] != first
        # Each holds its own range's map (canonical ids -> the range, host root -> itself).
        for fd, base in ((first, FIRST_BASE), (second, FIRST_BASE + ID_RANGE)):
            proc = await asyncio.create_subprocess_exec(
                *("nsenter", f"--user=/proc/{os.getpid()}/fd/{fd}", "cat", "/proc/self/uid_map"),
                stdout=asyncio.subprocess.PIPE,
            )
            shown = (await proc.communicate())[0].decode().split()
            assert shown == ["0", "0", "1", str(HOST_ID_BASE), str(base), str(ID_RANGE)]
    finally:
        cache.close()


def _as(uid: int, action: str, path: str, pid: int = 0) -> str:
    """Run one action as host uid `uid` (what an escaped sandbox root would be)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - in the child
        code = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if action == "write":
                with open(path, "w") as f:
                    f.write("mine\n")
            elif action == "kill":
                os.kill(pid, 0)
        except PermissionError:
            code = 13
        except OSError:
            code = 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    return {0: "ok", 13: "denied"}.get(os.waitstatus_to_exitcode(status), "error")


class _View:
    """One sandbox's rootfs: overlayfs over idmapped views of the image and of its disk."""

    def __init__(self, top: Path, lower: Path, base: int) -> None:
        self.base = base
        self.disk = top / "disk"
        self.root = top / "rootfs"
        for d in (self.disk / "upper", self.disk / "work", top / "lower", top / "store", self.root):
            d.mkdir(parents=True)
        st = lower.stat()
        os.chown(self.disk / "upper", st.st_uid, st.st_gid)
        os.chmod(self.disk / "upper", st.st_mode & 0o7777)
        os.chmod(top, 0o755)
        userns = asyncio.run(make_userns(base))
        try:
            mount_idmapped(lower, top / "lower", userns)
            mount_idmapped(self.disk, top / "store", userns)
        finally:
            os.close(userns)
        self.mounts = [top / "store", top / "lower"]
        mount_overlay(
            lower=top / "lower",
            upper=top / "store/upper",
            work=top / "store/work",
            target=self.root,
        )

    def close(self) -> None:
        unmount_overlay(self.root)
        for m in self.mounts:
            umount(m)


@pytest.fixture()
def two_views() -> Iterator[tuple[_View, _View]]:
    image = ImageStore(SHARED_IMAGES).get("default").rootfs
    top = Path(tempfile.mkdtemp(prefix="hutch-idmap-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    views: list[_View] = []
    try:
        for name, base in (("a", FIRST_BASE), ("b", FIRST_BASE + ID_RANGE)):
            views.append(_View(top / name, image, base))
        yield views[0], views[1]
    finally:
        for view in views:
            view.close()
        # NB: only after every mount is gone (a recursive delete would cross into the image).
        assert not any(
            str(top) in line for line in Path("/proc/self/mounts").read_text().splitlines()
        )
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)


@pytest.mark.sandbox
def test_each_sandbox_sees_the_shared_image_as_its_own(two_views: tuple[_View, _View]) -> None:
    a, b = two_views
    for view in (a, b):
        # The image's root-owned files are the sandbox's root's: base + 0.
        assert (view.root / "etc/passwd").stat().st_uid == view.base
        assert (view.root / "etc").stat().st_gid == view.base
        # Its root writes /etc (a copy-up through the idmapped views) ...
        assert _as(view.base, "write", str(view.root / "etc/hutch-probe")) == "ok"
        assert (view.root / "etc/hutch-probe").stat().st_uid == view.base
        # ... which is stored in the canonical range, as the image is.
        assert (view.disk / "upper/etc/hutch-probe").stat().st_uid == HOST_ID_BASE
    # The shared image is untouched.
    image = ImageStore(SHARED_IMAGES).get("default").rootfs
    assert not (image / "etc/hutch-probe").exists()


@pytest.mark.sandbox
def test_root_of_a_owns_nothing_of_b_and_cannot_signal_it(two_views: tuple[_View, _View]) -> None:
    a, b = two_views
    owners_a = {p.stat().st_uid for p in (a.root / "etc").iterdir() if not p.is_symlink()}
    owners_b = {p.stat().st_uid for p in (b.root / "etc").iterdir() if not p.is_symlink()}
    range_a = range(a.base, a.base + ID_RANGE)
    range_b = range(b.base, b.base + ID_RANGE)
    assert owners_a <= set(range_a) and owners_b <= set(range_b)
    assert not owners_a & owners_b
    # A's root, escaped to the host: B's /etc and /root are not its to write.
    assert _as(a.base, "write", str(b.root / "etc/owned-by-a")) == "denied"
    assert _as(a.base, "write", str(b.root / "root/owned-by-a")) == "denied"
    assert not (b.root / "etc/owned-by-a").exists()
    # ... nor B's disk as stored (canonical ids: nobody's).
    assert _as(a.base, "write", str(b.disk / "upper/owned-by-a")) == "denied"
    # ... nor B's processes: a process running as B's root cannot be signalled by A's root.
    victim = subprocess.Popen(
        ["setpriv", f"--reuid={b.base}", f"--regid={b.base}", "--clear-groups", "sleep", "30"]
    )
    try:
        assert _as(a.base, "kill", "", victim.pid) == "denied"
        assert _as(b.base, "kill", "", victim.pid) == "ok"  # the control: its own root can
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()


# -- real sandboxes: ranges are the default; HUTCH_UID_RANGES=0 is the opt-out ---------------


class _ServerWithout(ServerProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_UID_RANGES": "0"}


@pytest.fixture(scope="module")
def ranged_server() -> Iterator[ServerProcess]:
    from tests.conftest import _cleanup_home

    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-uids-", dir="/var/tmp")))
    assert "HUTCH_UID_RANGES" not in srv.env()  # the default
    try:
        srv.start(timeout=180)
        yield srv
    finally:
        srv.stop()
        _cleanup_home(srv)


def _init_pid(srv: ServerProcess, sandbox_id: str) -> int:
    state = json.loads((srv.home / "runc" / sandbox_id / "state.json").read_text())
    return int(state["init_process_pid"])


def _host_uids(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("Uid:"))
    return {int(v) for v in line.split()[1:]}


def _key_users() -> set[int]:
    return {int(line.split(":")[0]) for line in Path("/proc/key-users").read_text().splitlines()}


@pytest.mark.sandbox
def test_sandboxes_run_as_disjoint_host_uids(ranged_server: ServerProcess) -> None:
    opts = {"base_url": ranged_server.url, "api_key": ranged_server.api_key}
    with Sandbox.create(**opts) as a, Sandbox.create(**opts) as b:
        bases = {}
        for sb in (a, b):
            # Inside: root, and the image is root's (it can write /etc and its workspace).
            r = sb.exec("id -u; stat -c %u /etc/passwd; echo x > /etc/hutch-probe; touch w; id -un")
            assert r.stdout.split() == ["0", "0", "root"], r
            pid = _init_pid(ranged_server, sb.id)
            uids = _host_uids(pid)
            assert len(uids) == 1
            bases[sb.id] = uids.pop()
            rootfs = ranged_server.home / "sandboxes" / sb.id / "rootfs"
            assert (rootfs / "etc/passwd").stat().st_uid == bases[sb.id]
            assert (rootfs / "etc/hutch-probe").stat().st_uid == bases[sb.id]
        assert bases[a.id] != bases[b.id] and HOST_ID_BASE not in bases.values()
        assert abs(bases[a.id] - bases[b.id]) >= ID_RANGE
        # Abuse: A's root escaped to the host owns no file of running B, and cannot write
        # B's /etc, /root or its disk as stored (canonical ids: nobody's).
        b_root = ranged_server.home / "sandboxes" / b.id / "rootfs"
        b_owners = {p.lstat().st_uid for p in (b_root / "etc").iterdir()}
        assert b_owners and not b_owners & set(range(bases[a.id], bases[a.id] + ID_RANGE))
        for target in ("etc/owned-by-a", "root/owned-by-a"):
            assert _as(bases[a.id], "write", str(b_root / target)) == "denied", target
            assert _as(bases[b.id], "write", str(b_root / target)) == "ok", target  # control
        assert b.exec("cat /root/owned-by-a").stdout == "mine\n"  # the control's, seen by B
        assert _as(bases[a.id], "kill", "", _init_pid(ranged_server, b.id)) == "denied"
        # The kernel's per-uid limits (keys, processes) count each sandbox on its own: no
        # key user is shared between them (there are none in either with noNewKeyring).
        assert not {bases[a.id], bases[b.id]} & _key_users() - {bases[a.id]}
        # A non-root user inside maps into the same range, not onto another sandbox's.
        a.exec("useradd -m probe || adduser --disabled-password --gecos '' probe")
        a.exec("nohup su probe -c 'sleep 30' >/dev/null 2>&1 &")
        time_out = 50
        seen: set[int] = set()
        while time_out and not seen:
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        if (proc / "comm").read_text().strip() == "sleep":
                            seen |= {u for u in _host_uids(int(proc.name)) if u > bases[a.id]}
                    except OSError:
                        continue
            time_out -= 1
        assert seen and all(bases[a.id] < u < bases[a.id] + ID_RANGE for u in seen), seen
        # Stop and start keep the range; destroy gives it back.
        a.stop()
        a.start()
        assert _host_uids(_init_pid(ranged_server, a.id)) == {bases[a.id]}
        assert a.exec("cat /etc/hutch-probe").stdout == "x\n"
    assert not (ranged_server.home / "uids" / a.id).exists()


@pytest.mark.sandbox
def test_the_opt_out_runs_every_sandbox_in_the_one_canonical_range() -> None:
    from tests.conftest import _cleanup_home

    srv = _ServerWithout(Path(tempfile.mkdtemp(prefix="hutch-uids-off-", dir="/var/tmp")))
    try:
        srv.start(timeout=180)
        with Sandbox.create(base_url=srv.url, api_key=srv.api_key) as sb:
            assert sb.exec("id -u").stdout == "0\n"
            assert _host_uids(_init_pid(srv, sb.id)) == {HOST_ID_BASE}
            assert not (srv.home / "uids" / sb.id).exists()
            assert not (srv.home / "sandboxes" / sb.id / "lower").is_mount()
    finally:
        srv.stop()
        _cleanup_home(srv)
