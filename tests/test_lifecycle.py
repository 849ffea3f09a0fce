"""Lifecycle: pause/resume, stop/start, lifetimes, idle sleep with wake-on-demand, snapshots,
fork, persistence across kill -9 and host restarts, and the per-uid keyring limit."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox
from hutch.sdk import (
    BucketMountFailed,
    Conflict,
    InvalidRequest,
    NotFoundError,
    SandboxUnavailable,
)
from tests._server import ServerProcess, wait_for
from tests.support.s3 import S3Server

pytestmark = pytest.mark.sandbox

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"


@pytest.fixture()
def opts(server: ServerProcess) -> dict[str, str]:
    return {"base_url": server.url, "api_key": server.api_key}


@pytest.fixture()
def box(opts: dict[str, str], busybox_image: str) -> Iterator[Sandbox]:
    sb = Sandbox.create(image=busybox_image, **opts)
    yield sb
    try:
        sb.destroy()
    except NotFoundError:
        pass


def _count(sb: Sandbox) -> int:
    return int(sb.exec("cat /tmp/count").stdout.strip() or 0)


def _status(sb: Sandbox) -> str:
    # info() reads the state without waking the sandbox or counting as activity.
    return sb.info().status


def _host_count(server: ServerProcess, sb: Sandbox) -> int:
    """The counter file read on the host (its disk), without a request to the sandbox."""
    path = server.home / "storage" / sb.id / "upper" / "tmp" / "count"
    return int(path.read_text().strip() or 0)


def test_pause_freezes_and_resume_continues_the_same_processes(
    box: Sandbox, server: ServerProcess
) -> None:
    proc = box.start_process(f"sh -c '{COUNTER}'")
    wait_for(lambda: _count(box) > 3, timeout=20)
    info = box.pause()
    assert info.status == "paused" and info.status_reason == "paused by request"
    assert info.expires_at is None  # an explicit pause stops the lifetime clock
    frozen = _host_count(server, box)
    time.sleep(1.5)  # ~30 ticks if it were running
    assert _host_count(server, box) == frozen
    assert _status(box) == "paused"
    again = box.pause()  # pausing a paused sandbox is a no-op
    assert again.status == "paused"
    assert box.resume().status == "running"
    after = _count(box)
    assert frozen <= after < frozen + 40, (frozen, after)  # went on from where it was
    assert box.get_process(proc.id).status == "running"
    assert box.get_process(proc.id).pid == proc.pid
    wait_for(lambda: _count(box) > after + 3, timeout=10)  # and it keeps counting
    assert box.info().expires_at is not None  # resume gives the lifetime back


def test_resume_of_running_is_a_noop_and_pause_of_stopped_is_409(box: Sandbox) -> None:
    box.exec("echo 1 > /tmp/x")
    assert box.resume().status == "running"
    assert box.exec("cat /tmp/x").stdout == "1\n"
    assert box.stop().status == "stopped"
    with pytest.raises(Conflict) as err:
        box.pause()
    assert err.value.status == 409 and err.value.code == "invalid_state"
    assert "stopped" in err.value.message
    assert box.stop().status == "stopped"  # stopping twice is a no-op


def test_any_request_wakes_a_paused_sandbox(box: Sandbox) -> None:
    box.exec("echo kept > /tmp/mem")
    box.pause()
    # No resume: the exec waits for the wake and never sees an error.
    assert box.exec("cat /tmp/mem").stdout == "kept\n"
    assert _status(box) == "running"


def test_stop_keeps_the_disk_and_start_boots_it_again(box: Sandbox) -> None:
    box.exec("mkdir -p /data && echo persisted > /data/f")
    box.start_process("sleep 1000", process_id="sleeper")
    info = box.stop()
    assert info.status == "stopped" and info.status_reason == "stopped by request"
    assert info.expires_at is None
    assert box.start().status == "running"
    assert box.exec("cat /data/f").stdout == "persisted\n"
    assert [p.id for p in box.list_processes()] == []  # processes ended with the stop
    assert box.exec("ps -o comm | grep -c '^sleep$' || true").stdout.strip() == "0"


def test_any_request_starts_a_stopped_sandbox(box: Sandbox) -> None:
    box.exec("echo on-disk > /tmp/f")
    box.stop()
    assert box.exec("cat /tmp/f").stdout == "on-disk\n"
    assert _status(box) == "running"


def test_set_timeout_and_bad_durations(box: Sandbox, server: ServerProcess) -> None:
    info = box.set_timeout("1h30m")
    assert info.timeout == 5400
    assert info.expires_at is not None
    left = info.expires_at.timestamp() - time.time()
    assert 5300 < left <= 5400
    assert box.set_timeout(0).expires_at is None  # 0: no limit
    with pytest.raises(InvalidRequest) as err:
        box.set_timeout("10 minutes")
    assert err.value.status == 422
    assert '"10m"' in err.value.message and '"1h30m"' in err.value.message
    with server.client() as http:
        r = http.post("/v1/sandboxes", json={"sleep_after": "10 minutes"})
        assert r.status_code == 422
        assert "seconds as a number" in r.json()["error"]["message"]
        r = http.put(f"/v1/sandboxes/{box.id}/timeout", json={"timeout": -5})
        assert r.status_code == 422


def test_default_lifetime_is_given(box: Sandbox) -> None:
    info = box.info()
    assert info.expires_at is not None and info.timeout == 3600
    assert 3500 < info.expires_at.timestamp() - time.time() <= 3600


def test_on_timeout_stop(opts: dict[str, str], busybox_image: str) -> None:
    sb = Sandbox.create(image=busybox_image, on_timeout="stop", **opts)
    try:
        sb.exec("echo still-here > /tmp/f")
        sb.set_timeout(1)
        wait_for(lambda: _status(sb) == "stopped", timeout=20)
        info = sb.info()
        assert "timeout" in (info.status_reason or "")
        assert sb.exec("cat /tmp/f").stdout == "still-here\n"  # its disk was kept
    finally:
        sb.destroy()


def test_on_timeout_pause(opts: dict[str, str], busybox_image: str) -> None:
    sb = Sandbox.create(image=busybox_image, timeout=1, on_timeout="pause", **opts)
    try:
        wait_for(lambda: _status(sb) == "paused", timeout=20)
        assert sb.exec("echo woke").stdout == "woke\n"
    finally:
        sb.destroy()


def test_idle_sandbox_sleeps_and_wakes_on_the_next_call(
    opts: dict[str, str], busybox_image: str
) -> None:
    sb = Sandbox.create(image=busybox_image, sleep_after="1s", **opts)
    keep = Sandbox.create(image=busybox_image, sleep_after=1, keep_alive=True, **opts)
    stop = Sandbox.create(image=busybox_image, sleep_after=1, on_idle="stop", **opts)
    try:
        sb.exec("echo 42 > /tmp/v")
        wait_for(lambda: _status(sb) == "paused", timeout=20)
        assert sb.info().status_reason == "idle for 1s"
        assert sb.exec("cat /tmp/v").stdout == "42\n"
        wait_for(lambda: _status(stop) == "stopped", timeout=20)
        assert stop.exec("echo up").stdout == "up\n"
        assert _status(keep) == "running"  # keep_alive: never sleeps
    finally:
        for s in (sb, keep, stop):
            s.destroy()


def test_an_open_stream_keeps_a_sandbox_awake(opts: dict[str, str], busybox_image: str) -> None:
    sb = Sandbox.create(image=busybox_image, sleep_after=1, **opts)
    try:
        # A command that runs 3 s with output streaming back: the sandbox is in use.
        assert sb.exec("sleep 3; echo done").stdout == "done\n"
        assert _status(sb) == "running"
    finally:
        sb.destroy()


def test_preview_request_wakes_a_sleeping_sandbox(
    server: ServerProcess, opts: dict[str, str], busybox_image: str
) -> None:
    sb = Sandbox.create(image=busybox_image, **opts)
    try:
        sb.exec("mkdir -p /www && echo hello > /www/index.html")
        sb.start_process("httpd -f -p 8080 -h /www")
        # The server's own address with the preview Host (no reliance on *.localhost DNS).
        host = {"Host": urlsplit(sb.get_preview_url(8080)).netloc}
        page = server.url + "/index.html"
        wait_for(lambda: _get(page, host) == 200, timeout=20)
        sb.pause()
        r = httpx.get(page, headers=host, timeout=20)
        assert r.status_code == 200 and r.text == "hello\n"
        assert _status(sb) == "running"
        sb.stop()
        # Stopped: the web server is gone with its processes, but the sandbox is up again
        # for the request (it answers 502: nothing listens on the port any more).
        r = httpx.get(page, headers=host, timeout=20)
        assert _status(sb) == "running"
        assert r.status_code == 502
    finally:
        sb.destroy()


def _get(url: str, headers: dict[str, str]) -> int:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_snapshot_create_from_it_and_fork(opts: dict[str, str], busybox_image: str) -> None:
    sb = Sandbox.create(image=busybox_image, env={"FROM_ORIGIN": "1"}, sleep_after="10m", **opts)
    made: list[Sandbox] = [sb]
    sb.set_network("none")  # changed after its create: forks take the network it has now
    try:
        sb.exec("mkdir -p /proj && echo v1 > /proj/state")
        snap = sb.snapshot(name=f"snap-{sb.id}")
        assert snap.sandbox_id == sb.id and snap.image == busybox_image
        with pytest.raises(Conflict):
            sb.snapshot(name=f"snap-{sb.id}")
        sb.exec("echo v2 > /proj/state")
        copy = Sandbox.create(snapshot=f"snap-{sb.id}", **opts)
        made.append(copy)
        assert copy.exec("cat /proj/state").stdout == "v1\n"
        assert copy.exec("echo $FROM_ORIGIN").stdout == "1\n"
        copy.exec("echo mine > /proj/state")
        assert sb.exec("cat /proj/state").stdout == "v2\n"  # independent disks
        forks = sb.fork(count=2)
        made += forks
        assert len({f.id for f in forks}) == 2
        for f in forks:
            assert f.exec("cat /proj/state").stdout == "v2\n"
            assert f.info().sleep_after == 600  # the source's idle policy, too
            assert f.info().network == "none"  # and its network, not the default
        assert [s.id for s in Sandbox.list_snapshots(sb.id, **opts)] == [snap.id]
        Sandbox.delete_snapshot(snap.id, **opts)
        with pytest.raises(NotFoundError) as err:
            Sandbox.create(snapshot=snap.id, **opts)
        assert err.value.code == "snapshot_not_found"
        with pytest.raises(NotFoundError):
            Sandbox.delete_snapshot(snap.id, **opts)
    finally:
        for s in made:
            s.destroy()


def test_fork_count_out_of_range_is_422(box: Sandbox) -> None:
    with pytest.raises(InvalidRequest):
        box.fork(count=0)


def test_unknown_sandbox_lifecycle_is_404(server: ServerProcess) -> None:
    with server.client() as http:
        for path in ("pause", "resume", "stop", "start", "snapshots", "fork"):
            r = http.post(f"/v1/sandboxes/nope-123/{path}")
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "sandbox_not_found"


def test_no_session_keyring_per_sandbox(opts: dict[str, str], busybox_image: str) -> None:
    """Every sandbox's root is the same host uid, which may own 200 keys: a session keyring
    per container capped a host at 200 sandboxes."""
    before = _keys_of(1_000_000_000)
    made = [Sandbox.create(image=busybox_image, **opts) for _ in range(4)]
    try:
        grown = _keys_of(1_000_000_000) - before
        assert grown < 4, f"{grown} new keys for 4 sandboxes"
    finally:
        for s in made:
            s.destroy()


def _keys_of(uid: int) -> int:
    for line in Path("/proc/key-users").read_text().splitlines():
        owner, _, rest = line.partition(":")
        if int(owner) == uid:
            return int(rest.split()[2].split("/")[0])  # "qnkeys/maxkeys"
    return 0


# -- persistence ---------------------------------------------------------------------------


@pytest.fixture()
def own_server(
    tmp_path_factory: pytest.TempPathFactory, busybox_image: str
) -> Iterator[ServerProcess]:
    import shutil
    import tempfile

    from tests.conftest import _cleanup_home

    home = Path(tempfile.mkdtemp(prefix="hutch-lc-", dir="/var/tmp"))
    srv = ServerProcess(home)
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)
    shutil.rmtree(home, ignore_errors=True)


def test_paused_and_stopped_survive_kill9_and_a_host_restart(
    own_server: ServerProcess, busybox_image: str
) -> None:
    opts = {"base_url": own_server.url, "api_key": own_server.api_key}
    paused = Sandbox.create(image=busybox_image, **opts)
    stopped = Sandbox.create(image=busybox_image, **opts)
    paused.start_process(f"sh -c '{COUNTER}'")
    wait_for(lambda: _count(paused) > 3, timeout=20)
    stopped.exec("echo on-disk > /tmp/f")
    paused.exec("echo paused-disk > /tmp/f")
    paused.pause()
    stopped.stop()
    before = _host_count(own_server, paused)

    own_server.kill9()
    own_server.start()
    assert _status(paused) == "paused" and _status(stopped) == "stopped"
    assert _host_count(own_server, paused) == before  # still frozen after the restart
    after = _count(paused)  # wakes it: the same processes, mid-count
    assert before <= after < before + 40
    assert stopped.exec("cat /tmp/f").stdout == "on-disk\n"

    # A host restart: no container survives. Stop what runs, kill the server, remove them.
    paused.pause()
    stopped.stop()
    own_server.kill9()
    subprocess.run(
        ["runc", "--root", str(own_server.home / "runc"), "delete", "--force", paused.id],
        check=True,
    )
    own_server.start()
    info = paused.info()
    assert info.status == "stopped"
    assert "memory" in (info.status_reason or "")
    assert paused.start().status == "running"
    assert paused.exec("cat /tmp/f").stdout == "paused-disk\n"
    assert stopped.start().status == "running"
    assert stopped.exec("cat /tmp/f").stdout == "on-disk\n"


def test_cli_pause_resume_stop_timeout_and_snapshots(
    sdk_env: ServerProcess, busybox_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hutch.cli import main

    def hutch(*argv: str) -> str:
        assert main(list(argv)) == 0
        return capsys.readouterr().out

    sb_id = hutch("create", "--image", busybox_image, "--sleep-after", "10m").strip()
    try:
        assert hutch("pause", sb_id).split() == [sb_id, "paused"]
        [row] = [r for r in hutch("ls").splitlines() if r.startswith(sb_id)]
        assert row.split()[1] == "paused"
        assert hutch("stop", sb_id).split() == [sb_id, "stopped"]
        assert hutch("resume", sb_id).split() == [sb_id, "running"]
        assert hutch("timeout", sb_id, "0").strip() == "no limit"
        snap = hutch("snapshot", "create", sb_id, "--name", f"cli-{sb_id}").strip()
        assert snap in hutch("snapshot", "ls", "-q").split()
        hutch("snapshot", "rm", f"cli-{sb_id}")
        assert snap not in hutch("snapshot", "ls", "-q").split()
        assert main(["timeout", sb_id, "ten minutes"]) == 1
        assert "seconds as a number" in capsys.readouterr().err
    finally:
        hutch("rm", sb_id)


# -- backups ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


def test_backup_incremental_and_restore_here_and_on_another_server(
    own_server: ServerProcess, server: ServerProcess, s3: S3Server, busybox_image: str
) -> None:
    bucket = f"bk{time.time_ns() % 10**9}"
    s3.make_bucket(bucket)
    where = {"endpoint": s3.endpoint, "credentials": s3.credentials, "prefix": "team/a"}
    sb = Sandbox.create(image=busybox_image, base_url=server.url, api_key=server.api_key)
    try:
        sb.exec("mkdir -p /proj && echo one > /proj/f && head -c 300000 /dev/urandom > /proj/r")
        first = sb.backup(bucket, **where)  # type: ignore[arg-type]
        assert first.parent_id is None
        sb.exec("echo two > /proj/f")
        second = sb.backup(bucket, **where)  # type: ignore[arg-type]
        assert second.parent_id == first.id  # incremental against the first
        objects = sorted(p.name for p in (s3.root / bucket / "team" / "a").iterdir())
        assert objects == sorted(f"{b.id}{ext}" for b in (first, second)
                                 for ext in (".json", ".btrfs.zst"))  # fmt: skip
        # The incremental stream holds the change, not the 300 kB of random bytes again.
        sizes = {p.name: p.stat().st_size for p in (s3.root / bucket / "team" / "a").iterdir()}
        assert sizes[f"{second.id}.btrfs.zst"] < sizes[f"{first.id}.btrfs.zst"] / 3
        assert [b.id for b in sb.list_backups()] == [first.id, second.id]

        # Restore on another server (its own home and storage pool): the whole chain.
        other = {"base_url": own_server.url, "api_key": own_server.api_key}
        restored = Sandbox.restore(second.id, bucket, **where, **other)  # type: ignore[arg-type]
        assert restored.exec("cat /proj/f").stdout == "two\n"
        assert restored.exec("wc -c < /proj/r").stdout.strip() == "300000"
        old = Sandbox.restore(first.id, bucket, **where, **other)  # type: ignore[arg-type]
        assert old.exec("cat /proj/f").stdout == "one\n"

        # Bad input: an unreachable bucket is a 400 and writes nothing; an unknown backup 404.
        with pytest.raises(BucketMountFailed) as err:
            sb.backup("no-such-bucket", **where)  # type: ignore[arg-type]
        assert err.value.status == 400 and err.value.code == "backup_target_unreachable"
        assert len(sb.list_backups()) == 2
        with pytest.raises(NotFoundError) as missing:
            Sandbox.restore("bk-000000000000", bucket, **where, **other)  # type: ignore[arg-type]
        assert missing.value.code == "backup_not_found"
    finally:
        sb.destroy()


def test_console_shows_the_state_and_pauses_and_resumes(
    server: ServerProcess, opts: dict[str, str], busybox_image: str
) -> None:
    import tempfile

    import playwright.sync_api as sync_api

    from tests.test_console import CHROMIUM, CHROMIUM_ARGS

    sb = Sandbox.create(image=busybox_image, **opts)
    try:
        with tempfile.TemporaryDirectory(prefix="hutch-chromium-") as profile:
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch_persistent_context(
                    profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(60_000)
                    page.goto(server.url + "/console/")
                    page.fill("#login-key", server.api_key)
                    page.click("#login-form button")
                    row = f"tr[data-id='{sb.id}']"
                    page.wait_for_selector(f"{row} >> text=running")
                    page.click(f"{row} button.pause")
                    page.wait_for_selector(f"{row} td.status-paused")
                    assert page.get_attribute(f"{row} td.status-paused", "title") == (
                        "paused by request"
                    )
                    assert _status(sb) == "paused"
                    page.click(f"{row} button.resume")
                    page.wait_for_selector(f"{row} td.status-running")
                finally:
                    browser.close()
        assert _status(sb) == "running"
    finally:
        sb.destroy()


def test_a_start_that_fails_is_503_and_keeps_the_sandbox_stopped(
    box: Sandbox, server: ServerProcess
) -> None:
    box.stop()
    # The disk is gone behind the server's back: the start cannot succeed.
    subprocess.run(
        ["btrfs", "subvolume", "delete", str(server.home / "storage" / box.id)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(SandboxUnavailable) as err:
        box.start()
    assert err.value.status == 503 and err.value.code == "sandbox_start_failed"
    info = box.info()
    assert info.status == "stopped" and "last start failed" in (info.status_reason or "")
