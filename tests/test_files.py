"""Files end to end: the SDK against a real server and real runc sandboxes."""

from __future__ import annotations

import io
import os
import threading
import time

import httpx
import pytest

from hutch import APIError, Conflict, FileNotFound, InvalidRequest, Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Sandbox:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key, labels={"suite": "files"})
    yield box
    box.destroy()


def test_write_and_read_every_kind_of_source(sb: Sandbox) -> None:
    assert sb.write_file("a.txt", "héllo") == len("héllo".encode())
    assert sb.read_file("a.txt", text=True) == "héllo"
    assert sb.read_file("/workspace/a.txt") == "héllo".encode()
    sb.write_file("b.bin", bytes(range(256)) * 10)
    assert sb.read_file("b.bin") == bytes(range(256)) * 10
    sb.write_file("c.bin", io.BytesIO(b"x" * 3_000_000))
    assert sb.read_file("c.bin") == b"x" * 3_000_000
    sb.write_file("deep/er/d.txt", (f"line {i}\n".encode() for i in range(1000)))
    assert sb.read_file("deep/er/d.txt", text=True).count("\n") == 1000
    sb.write_file("empty", b"")
    assert sb.read_file("empty") == b""


def test_ranges_stream_and_mode(sb: Sandbox) -> None:
    sb.write_file("r.bin", bytes(range(256)))
    assert sb.read_file("r.bin", offset=10, length=5) == bytes(range(10, 15))
    assert sb.read_file("r.bin", offset=250) == bytes(range(250, 256))
    assert sb.read_file("r.bin", offset=1000) == b""
    assert b"".join(sb.read_file_stream("r.bin")) == bytes(range(256))
    sb.write_file("run.sh", "#!/bin/sh\necho ran\n", mode=0o755)
    assert sb.stat("run.sh").mode == 0o755
    assert sb.exec("./run.sh", cwd="/workspace").stdout == "ran\n"


def test_mkdir_list_stat_exists(sb: Sandbox) -> None:
    sb.mkdir("tree/x/y", recursive=True)
    sb.write_file("tree/x/y/f.txt", "12345")
    sb.write_file("tree/.hidden", "h")
    sb.exec("ln -s /etc/passwd /workspace/tree/link")
    top = {e.name: e for e in sb.list_files("tree")}
    assert set(top) == {"x", "link"}
    assert top["x"].type == "directory"
    assert top["link"].type == "symlink" and top["link"].target == "/etc/passwd"
    everything = {e.path: e for e in sb.list_files("tree", recursive=True, include_hidden=True)}
    assert set(everything) == {"x", "x/y", "x/y/f.txt", ".hidden", "link"}
    f = everything["x/y/f.txt"]
    assert f.size == 5 and f.type == "file" and f.absolute_path == "/workspace/tree/x/y/f.txt"
    assert f.mtime > time.time() - 600
    assert sb.exists("tree/x") and not sb.exists("tree/nope")
    assert sb.stat("/workspace/tree").type == "directory"
    with pytest.raises(FileNotFound):
        sb.stat("tree/nope")
    with pytest.raises(Conflict):
        sb.mkdir("tree/x")  # exists


def test_delete_remove_rename_move(sb: Sandbox) -> None:
    sb.write_file("mv/a.txt", "a")
    sb.mkdir("mv/dest")
    assert sb.rename_file("mv/a.txt", "mv/b.txt") == "/workspace/mv/b.txt"
    assert sb.move_file("mv/b.txt", "mv/dest/") == "/workspace/mv/dest/b.txt"
    assert sb.read_file("mv/dest/b.txt") == b"a"
    with pytest.raises(Conflict) as e:
        sb.delete_file("mv/dest")
    assert e.value.code == "is_a_directory"
    with pytest.raises(Conflict) as e:
        sb.remove("mv")
    assert e.value.code == "directory_not_empty"
    sb.delete_file("mv/dest/b.txt")
    assert not sb.exists("mv/dest/b.txt")
    sb.remove("mv", recursive=True)
    assert not sb.exists("mv")
    with pytest.raises(FileNotFound):
        sb.delete_file("mv/whatever")


def test_bad_input_codes(sb: Sandbox, server: ServerProcess) -> None:
    with pytest.raises(FileNotFound) as nf:
        sb.read_file("missing.txt")
    assert nf.value.status == 404 and nf.value.code == "file_not_found"
    sb.mkdir("adir", recursive=True)
    with pytest.raises(Conflict) as c:
        sb.read_file("adir")
    assert c.value.status == 409 and c.value.code == "is_a_directory"
    with pytest.raises(Conflict) as c:
        sb.write_file("adir", "x")
    assert c.value.code == "is_a_directory"
    sb.write_file("afile", "x")
    with pytest.raises(Conflict) as c:
        sb.list_files("afile")
    assert c.value.code == "not_a_directory"
    with pytest.raises(Conflict) as c:
        sb.write_file("afile/sub", "x")
    assert c.value.code == "not_a_directory"
    for bad in ("a" * 4097, "a\0b", ""):
        with pytest.raises(InvalidRequest) as ir:
            sb.write_file(bad, "x")
        assert ir.value.status == 422
    with pytest.raises(InvalidRequest) as ir:
        sb.read_file("x/" * 2049)
    assert ir.value.code == "invalid_path"
    # Read-only mounts: the agent's own code and runtime (host directories), and /sys.
    for ro in ("/.hutch/code/evil.py", "/.hutch/python/x", "/sys/kernel/evil"):
        with pytest.raises(Conflict) as c:
            sb.write_file(ro, "x")
        assert c.value.code == "read_only", ro


@pytest.mark.timeout(120)  # the deadline: a read that hangs fails the test here
def test_special_files_never_hang(sb: Sandbox) -> None:
    sb.exec("mkfifo /workspace/fifo")
    for path in ("fifo", "/dev/zero", "/dev/urandom", "/dev/null"):
        with pytest.raises(Conflict) as c:
            sb.read_file(path)
        assert c.value.code == "not_a_regular_file"
    with pytest.raises(Conflict):
        sb.write_file("fifo", "x")
    # Unreadable kernel files are an error with a code, never a 500 or a hang.
    for path in ("/proc/self/mem", "/proc/kmsg", "/proc/1/pagemap"):
        try:
            sb.read_file(path)
        except APIError as e:
            assert e.status < 500, (path, e)
    # /proc files (size 0, made on the fly) are read with a bound.
    assert b"Name:" in sb.read_file("/proc/self/status")
    assert sb.read_file("/proc/uptime")


def test_raw_http_routes(sb: Sandbox, server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    base = f"{server.url}/v1/sandboxes/{sb.id}/files"
    r = httpx.put(f"{base}/content", params={"path": "raw.txt"}, content=b"raw", headers=headers)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{base}/content", params={"path": "raw.txt"}, headers=headers)
    assert r.content == b"raw" and r.headers["content-length"] == "3"
    r = httpx.get(f"{base}/content", params={"path": "nope"}, headers=headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
    r = httpx.get(f"{base}/stat", params={"path": "a\0b"}, headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_path"


def test_watch_reports_changes_and_stops(sb: Sandbox) -> None:
    sb.mkdir("w/sub", recursive=True)
    events: list = []
    ready = threading.Event()

    def consume() -> None:
        for ev in sb.watch("w", recursive=True, exclude=["*.tmp"]):
            events.append(ev)
            ready.set()
            if ev.type == "delete" and ev.path.endswith("gone.txt"):
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    # The watch is set up once the request is answered; poke until it reports.
    deadline = time.monotonic() + 30
    while not ready.is_set() and time.monotonic() < deadline:
        sb.exec("touch /workspace/w/probe")
        ready.wait(0.3)
    assert ready.is_set()
    sb.exec(
        "cd /workspace/w && echo 1 > sub/new.txt && echo 2 >> sub/new.txt && "
        "echo t > x.tmp && chmod 600 sub/new.txt && mv sub/new.txt moved.txt && "
        "mkdir -p sub/deeper && echo d > sub/deeper/gone.txt && rm sub/deeper/gone.txt"
    )
    thread.join(30)
    assert not thread.is_alive()
    seen = {(e.type, os.path.relpath(e.path, "/workspace/w")) for e in events}
    assert ("create", "sub/new.txt") in seen
    assert ("modify", "sub/new.txt") in seen
    assert ("attrib", "sub/new.txt") in seen
    assert ("create", "sub/deeper") in seen
    assert ("delete", "sub/deeper/gone.txt") in seen
    moves = [e for e in events if e.type == "move"]
    assert moves and moves[0].old_path == "/workspace/w/sub/new.txt"
    assert not any(e.path.endswith(".tmp") for e in events)
    # The watch stopped in the agent: the sandbox still answers, and no inotify fd leaks.
    r = sb.exec("ls -l /proc/1/fd | grep -c inotify || true")
    assert r.stdout.strip() == "0"


def test_watch_reports_sdk_writes_by_their_final_name(sb: Sandbox) -> None:
    sb.mkdir("w2", recursive=True)
    events: list = []
    ready = threading.Event()

    def consume() -> None:
        for ev in sb.watch("w2"):
            events.append(ev)
            ready.set()
            if ev.type == "delete" and ev.path.endswith("end"):
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ready.is_set() and time.monotonic() < deadline:
        sb.exec("touch /workspace/w2/probe")
        ready.wait(0.3)
    sb.write_file("w2/new.txt", "first")
    sb.write_file("w2/new.txt", "second")
    sb.write_file("w2/new.txt", b"big" * 400_000)  # swapped into place (agent/_replace.py)
    sb.exec("touch /workspace/w2/end && rm /workspace/w2/end")
    thread.join(30)
    names = [(e.type, os.path.basename(e.path)) for e in events]
    assert not any(".hutch-" in e.path or ".hutch-" in (e.old_path or "") for e in events), names
    written = [n for n in names if n[1] == "new.txt"]
    assert written == [("create", "new.txt"), ("modify", "new.txt"), ("modify", "new.txt")], names


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_one_gib_up_and_down_keeps_server_memory_bounded(server: ServerProcess) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    size = 1024 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], _rss_mb(pid))

    with Sandbox.create(base_url=server.url, api_key=server.api_key, disk_mb=2048) as box:
        before = _rss_mb(pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            assert box.write_file("big.bin", (block for _ in range(1024))) == size
            assert box.stat("big.bin").size == size
            got = 0
            for chunk in box.read_file_stream("big.bin"):
                if got % (256 * 1024 * 1024) < len(chunk):  # spot-check the content
                    start = got % len(block)
                    assert chunk[:64] == (block + block)[start : start + 64]
                got += len(chunk)
            assert got == size
        finally:
            stop.set()
            sampler.join()
    # Streamed both ways: the server's memory grows by buffers, never by the file.
    assert peak[0] - before < 200, (before, peak[0])


def test_file_api_needs_nothing_from_the_image(server: ServerProcess, busybox_image: str) -> None:
    """A bare busybox image (no libc, no Python, no inotify-tools): every op still works."""
    with Sandbox.create(image=busybox_image, base_url=server.url, api_key=server.api_key) as box:
        box.write_file("/tmp/w/a.txt", "busy")
        assert box.read_file("/tmp/w/a.txt", text=True) == "busy"
        assert [e.name for e in box.list_files("/tmp/w")] == ["a.txt"]
        box.rename_file("/tmp/w/a.txt", "/tmp/w/b.txt")
        assert box.stat("/tmp/w/b.txt").size == 4
        seen: list = []

        def consume() -> None:
            for ev in box.watch("/tmp/w"):
                seen.append(ev)
                return

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            box.write_file("/tmp/w/c.txt", "x")
            thread.join(0.3)
        assert seen and seen[0].path.startswith("/tmp/w/")
        box.remove("/tmp/w", recursive=True)
        assert not box.exists("/tmp/w")


def test_cut_off_upload_leaves_the_old_file(sb: Sandbox, server: ServerProcess) -> None:
    sb.write_file("keep.txt", "old")

    def body():
        yield b"new" * 1000
        raise RuntimeError("the client died")

    with pytest.raises(RuntimeError):
        httpx.put(
            f"{server.url}/v1/sandboxes/{sb.id}/files/content",
            params={"path": "keep.txt"},
            content=body(),
            headers={"Authorization": f"Bearer {server.api_key}"},
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = [e.name for e in sb.list_files(".", include_hidden=True)]
        if not any(".hutch-" in n for n in leftovers):
            break
        time.sleep(0.2)
    assert sb.read_file("keep.txt") == b"old"
    assert not any(".hutch-" in n for n in leftovers), leftovers


def test_big_upload_to_a_directory_gets_the_error_not_a_broken_pipe(sb: Sandbox) -> None:
    sb.mkdir("bigdir", recursive=True)
    block = b"z" * (1024 * 1024)
    with pytest.raises(Conflict) as c:
        sb.write_file("bigdir", (block for _ in range(64)))
    assert c.value.code == "is_a_directory"


def test_a_stalled_download_or_watch_does_not_stall_the_sandbox(sb: Sandbox) -> None:
    block = b"s" * (1024 * 1024)
    sb.write_file("stall.bin", (block for _ in range(64)))
    download = sb.read_file_stream("stall.bin")
    assert next(download)  # then nobody reads on: the stream's buffers fill up
    watch = sb.watch(".")
    started = threading.Thread(target=lambda: next(watch), daemon=True)
    started.start()
    deadline = time.monotonic() + 30
    while started.is_alive() and time.monotonic() < deadline:
        sb.write_file("churn.txt", "x")
        started.join(0.3)
    assert not started.is_alive()  # the watch runs, and from now on nobody reads it
    answers: list[str] = []
    thread = threading.Thread(
        target=lambda: answers.append(sb.exec("echo alive", timeout=30).stdout), daemon=True
    )
    for _ in range(200):
        sb.write_file("churn.txt", "x")  # events the stalled watch does not read
    thread.start()
    thread.join(60)
    assert answers == ["alive\n"]
    assert sb.read_file("churn.txt") == b"x"
    download.close()
    watch.close()
