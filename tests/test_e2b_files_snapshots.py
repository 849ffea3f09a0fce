"""The unmodified e2b SDK on what E2B's own suites check beyond the basics: files owned by
E2B's `user` with metadata kept as extended attributes, signed URLs without routing headers,
paused sandboxes that only `connect` (or autoResume) wakes, snapshots, fork and metrics."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from e2b import FilesystemEventType, Sandbox
from e2b.exceptions import SandboxException

from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def e2b_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    return server


@pytest.fixture()
def sbx(e2b_env: ServerProcess) -> Iterator[Sandbox]:
    sb = Sandbox.create(timeout=300)
    yield sb
    try:
        sb.kill()
    except SandboxException:
        pass


def _hutch(server: ServerProcess, route: str, **params: str) -> dict:  # type: ignore[type-arg]
    answer = httpx.get(
        f"{server.url}{route}",
        params=params,
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    answer.raise_for_status()
    result: dict = answer.json()  # type: ignore[type-arg]
    return result


def test_files_belong_to_user_and_entries_name_owner_and_group(
    e2b_env: ServerProcess, sbx: Sandbox
) -> None:
    sbx.files.make_dir("proj/src")
    sbx.files.write("proj/src/main.py", "print(1)\n")
    for path in ("proj", "proj/src", "proj/src/main.py"):
        info = sbx.files.get_info(path)
        assert (info.owner, info.group) == ("user", "user"), path
    listed = {e.name: e for e in sbx.files.list("proj/src")}
    assert (listed["main.py"].owner, listed["main.py"].group) == ("user", "user")
    # ...so E2B's default user can change them without sudo.
    sbx.commands.run("echo more >> proj/src/main.py && ln -s main.py proj/src/link")
    assert sbx.files.read("proj/src/main.py") == "print(1)\nmore\n"
    # A file root made stays root's, and Hutch's own API names owners too.
    sbx.commands.run("touch /tmp/rootfile", user="root")
    assert sbx.files.get_info("/tmp/rootfile").owner == "root"
    entry = _hutch(e2b_env, f"/v1/sandboxes/{sbx.sandbox_id}/files/stat", path="/tmp/rootfile")
    assert (entry["owner"], entry["group"]) == ("root", "root")


def test_symlink_info_gives_the_target(sbx: Sandbox) -> None:
    sbx.files.write("d/target.txt", "x")
    sbx.commands.run("ln -s target.txt link", cwd="/home/user/d")
    info = sbx.files.get_info("d/link")
    assert info.symlink_target == "/home/user/d/target.txt"


def test_metadata_is_kept_as_extended_attributes(sbx: Sandbox) -> None:
    info = sbx.files.write("meta.txt", "a", metadata={"author": "ada", "Stage": "draft"})
    assert info.metadata == {"author": "ada", "stage": "draft"}  # keys lowercased, as envd
    assert sbx.files.get_info("meta.txt").metadata == {"author": "ada", "stage": "draft"}
    listed = {e.name: e for e in sbx.files.list(".")}
    assert listed["meta.txt"].metadata == {"author": "ada", "stage": "draft"}
    # The attributes are real: the sandbox's own tools see them, and set ones show.
    out = sbx.commands.run(
        "python3 -c \"import os; print(sorted(os.listxattr('meta.txt')));"
        "os.setxattr('meta.txt', 'user.e2b.extra', b'1')\""
    )
    assert "user.e2b.author" in out.stdout
    assert sbx.files.get_info("meta.txt").metadata == {
        "author": "ada",
        "stage": "draft",
        "extra": "1",
    }
    assert sbx.files.rename("meta.txt", "moved.txt").metadata is not None
    # Writing again without metadata clears it, as envd does.
    sbx.files.write("moved.txt", "b")
    assert sbx.files.get_info("moved.txt").metadata is None


def test_a_write_is_seen_as_create_then_write(sbx: Sandbox) -> None:
    sbx.files.make_dir("w")
    handle = sbx.files.watch_dir("w")
    try:
        sbx.files.write("w/new.txt", "hello")
        deadline = time.monotonic() + 10
        events = []
        while time.monotonic() < deadline and FilesystemEventType.WRITE not in {
            e.type for e in events
        }:
            events += handle.get_new_events()
        kinds = [e.type for e in events if e.name == "new.txt"]
        # In place, as envd writes: the file itself is created, then written; no temp file.
        assert kinds[0] == FilesystemEventType.CREATE
        assert FilesystemEventType.WRITE in kinds
        assert all(e.name == "new.txt" for e in events)
    finally:
        handle.stop()


def test_a_recursive_watch_sees_a_tree_made_at_once(sbx: Sandbox) -> None:
    """`mkdir -p a/b && write a/b/f` in one command: the tree exists before the watcher sees
    `a` and watches it, so inotify never reports `a/b` nor the file; the watch reports what a
    new directory already holds (E2B's test_watch_recursive_directory_after_nested_folder_
    addition failed so under load)."""
    sbx.files.make_dir("tree")
    handle = sbx.files.watch_dir("tree", recursive=True)
    try:
        sbx.commands.run("mkdir -p tree/a/b && printf x > tree/a/b/f && : > tree/a/empty")
        want = {
            (FilesystemEventType.CREATE, "a"),
            (FilesystemEventType.CREATE, "a/b"),
            (FilesystemEventType.CREATE, "a/b/f"),
            (FilesystemEventType.WRITE, "a/b/f"),
            (FilesystemEventType.CREATE, "a/empty"),
        }
        seen: set[tuple[FilesystemEventType, str]] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not want <= seen:
            seen |= {(e.type, e.name) for e in handle.get_new_events()}
            time.sleep(0.05)
        assert want <= seen, sorted(seen)
        assert (FilesystemEventType.WRITE, "a/empty") not in seen  # nothing written to it
    finally:
        handle.stop()


def test_signed_urls_need_no_routing_header(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create(secure=True)
    other = Sandbox.create(secure=True)
    try:
        sb.files.write("secret.txt", "for sb")
        other.files.write("secret.txt", "for other")
        url = sb.download_url("secret.txt", "user", use_signature_expiration=60)
        with urllib.request.urlopen(url) as resp:  # no E2b-Sandbox-Id: the signature says
            assert resp.read() == b"for sb"
        with pytest.raises(urllib.error.HTTPError) as expired:
            urllib.request.urlopen(sb.download_url("secret.txt", "user", -60))
        assert expired.value.code == 401
        assert b"signature is already expired" in expired.value.read()
        expired.value.close()
        # A signature is worth one path of one sandbox.
        with pytest.raises(urllib.error.HTTPError) as tampered:
            urllib.request.urlopen(url.replace("secret.txt", "other.txt"))
        assert tampered.value.code == 401
        tampered.value.close()
        upload = sb.upload_url("up.txt", "user", use_signature_expiration=60)
        assert httpx.post(upload, files={"file": ("up.txt", b"up!")}).status_code == 200
        assert sb.files.read("up.txt") == "up!"
        assert sb.files.get_info("up.txt").owner == "user"
        # A plain form field named `file` (JS: `form.append('file', 'text')`) is content too.
        plain = sb.upload_url("plain.txt", "user", use_signature_expiration=60)
        r = httpx.post(plain, files={"file": (None, b"as a field")})
        assert r.status_code == 200, r.text
        # envd's entry: name, path, type (metadata only when the write set some)
        assert r.json() == [{"name": "plain.txt", "path": "/home/user/plain.txt", "type": "file"}]
        as_root = sb.upload_url("plain.txt", "root", use_signature_expiration=60)
        r = httpx.post(as_root, files={"file": (None, b"root's")})
        assert r.json() == [{"name": "plain.txt", "path": "/root/plain.txt", "type": "file"}]
        assert sb.files.read("/root/plain.txt", user="root") == "root's"
        assert sb.files.read("plain.txt") == "as a field"
    finally:
        sb.kill()
        other.kill()


def test_paused_sandbox_waits_for_connect_unless_auto_resume(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create(timeout=120)
    woken = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sb.files.write("kept.txt", "kept")
        assert sb.pause() is True
        assert not sb.is_running()  # E2B's proxy does not wake it...
        with pytest.raises(SandboxException):
            sb.commands.run("true")
        assert Sandbox.get_info(sb.sandbox_id).state.value == "paused"
        resumed = Sandbox.connect(sb.sandbox_id)  # ...connect does
        assert resumed.is_running()
        assert resumed.files.read("kept.txt") == "kept"

        assert woken.pause() is True
        assert woken.is_running()  # autoResume: the first request wakes it
        assert Sandbox.get_info(woken.sandbox_id).state.value == "running"
    finally:
        sb.kill()
        woken.kill()


def test_set_timeout_zero_ends_it_now(sbx: Sandbox) -> None:
    sbx.set_timeout(0)
    assert not sbx.is_running()  # gone at once for E2B, before the reconciler's pass

    def listed() -> bool:
        return sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]

    deadline = time.monotonic() + 10
    while listed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listed()


def test_snapshots_create_list_start_and_delete(sbx: Sandbox) -> None:
    sbx.files.write("app/state.txt", "v1")
    snap = sbx.create_snapshot(name="e2b-snap-test")
    try:
        assert "e2b-snap-test" in snap.names
        by_name = Sandbox.list_snapshots(name="e2b-snap-test").next_items()
        assert [s.snapshot_id for s in by_name] == [snap.snapshot_id]
        assert Sandbox.list_snapshots(name="no-such-snapshot").next_items() == []
        mine = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
        assert snap.snapshot_id in [s.snapshot_id for s in mine]
        sbx.files.write("app/state.txt", "v2")
        started = Sandbox.create(snap.snapshot_id)
        try:
            assert started.files.read("app/state.txt") == "v1"
            assert started.files.get_info("app/state.txt").owner == "user"
        finally:
            started.kill()
    finally:
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    with pytest.raises(SandboxException):
        Sandbox.create(snap.snapshot_id)


def test_template_exists_for_what_a_sandbox_can_start_from(
    sbx: Sandbox, e2b_env: ServerProcess
) -> None:
    """E2B's Template.exists: its template names, Hutch images and the caller's snapshots
    (by id or name); not another team's snapshot, nor a name nothing starts from."""
    from e2b import Template

    assert Template.exists("base") is True
    assert Template.exists("code-interpreter-v1") is True
    assert Template.exists("default") is True  # a Hutch image
    assert Template.exists("no-such-template-9f3a") is False
    snap = sbx.create_snapshot(name="e2b-exists-snap")
    try:
        assert Template.exists(snap.snapshot_id) is True
        assert Template.exists("e2b-exists-snap") is True
        with e2b_env.client() as admin:
            team = admin.post("/v1/teams", json={"name": "t-e2b-exists"}).json()["name"]
            other = admin.post("/v1/keys", json={"name": "x", "team": team, "e2b": True})
        other_key = other.json()["key"]
        assert Template.exists(snap.snapshot_id, api_key=other_key) is False
        assert Template.exists("e2b-exists-snap", api_key=other_key) is False
        assert Template.exists("base", api_key=other_key) is True
    finally:
        Sandbox.delete_snapshot(snap.snapshot_id)
    assert Template.exists(snap.snapshot_id) is False


def test_fork_gives_independent_copies(sbx: Sandbox) -> None:
    sbx.files.write("state.txt", "before")
    forks = sbx.fork(count=2, timeout=60)
    assert len(forks) == 2
    try:
        assert all(isinstance(f, Sandbox) for f in forks)
        ids = {f.sandbox_id for f in forks}  # type: ignore[union-attr]
        assert len(ids) == 2 and sbx.sandbox_id not in ids
        first, second = forks
        assert isinstance(first, Sandbox) and isinstance(second, Sandbox)
        first.files.write("state.txt", "changed")
        assert second.files.read("state.txt") == "before"
        assert sbx.files.read("state.txt") == "before"
        end = Sandbox.get_info(first.sandbox_id).end_at.timestamp()
        assert end - time.time() <= 61  # the fork's own lifetime
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()


def test_metrics_come_from_the_sandbox(sbx: Sandbox) -> None:
    metrics = sbx.get_metrics()
    assert metrics, "a running sandbox has a reading now"
    last = metrics[-1]
    assert last.cpu_count >= 1
    assert last.mem_total == 1024 * 1024 * 1024  # its memory limit
    assert 0 < last.mem_used < last.mem_total
    assert abs(last.timestamp.timestamp() - time.time()) < 15
    now = datetime.now(UTC)
    assert sbx.get_metrics(start=now - timedelta(hours=1), end=now - timedelta(minutes=30)) == []


def test_network_rules_map_onto_hutch_or_are_refused(e2b_env: ServerProcess) -> None:
    key = {"X-API-Key": e2b_env.api_key}
    body = {
        "templateID": "base",
        "network": {"denyOut": ["0.0.0.0/0"], "allowOut": ["10.9.0.0/16"]},
    }
    r = httpx.post(f"{e2b_env.url}/sandboxes", json=body, headers=key, timeout=60)
    assert r.status_code == 201, r.text
    sandbox_id = r.json()["sandboxID"]
    try:
        record = _hutch(e2b_env, f"/v1/sandboxes/{sandbox_id}/network")
        assert record["network"] == "none"
        assert record["network_allow"] == ["10.9.0.0/16"]
    finally:
        httpx.delete(f"{e2b_env.url}/sandboxes/{sandbox_id}", headers=key, timeout=60)
    for network in ({"egressProxy": {"address": "127.0.0.1:1080"}},):
        r = httpx.post(
            f"{e2b_env.url}/sandboxes",
            json={"templateID": "base", "network": network},
            headers=key,
            timeout=60,
        )
        assert r.status_code == 400, r.text
        assert r.json()["code"] == 400
