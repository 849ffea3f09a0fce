"""Files cannot be turned against the host: a symlink race, magic links, `..` and read-only mounts.

The agent serves every file op from inside the sandbox (its "/" is the sandbox's root), so a
path can at worst reach another file of the same sandbox. These tests try hard to prove it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from pathlib import Path

import pytest

from hutch import APIError, Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture
def canaries(server: ServerProcess, tmp_path: Path) -> list[Path]:
    secret = f"HOST-CANARY-{secrets.token_hex(16)}\n"
    paths = [server.home / "canary.txt", Path("/tmp") / f"hutch-canary-{secrets.token_hex(4)}"]
    for p in paths:
        p.write_text(secret)
    yield paths
    for p in paths:
        p.unlink(missing_ok=True)


def _digest(paths: list[Path]) -> list[tuple[str, float]]:
    return [(hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime) for p in paths]


def test_symlink_swap_race_never_reaches_the_host(server: ServerProcess, canaries: list[Path]):
    before = _digest(canaries)
    secret = canaries[0].read_bytes()
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
        sb.write_file("race/d/seed.txt", "inside")
        # Code in the sandbox swaps race/d between a directory and a symlink to / (and to the
        # canaries' host paths, which inside the sandbox do not exist or are its own files).
        swapper = (
            "cd /workspace/race; i=0; while [ ! -e /workspace/stop ]; do "
            "mv d d.real 2>/dev/null; ln -sfn / d; rm -f d; mv d.real d 2>/dev/null; "
            "ln -sfn / d.tmp; mv -T d.tmp d 2>/dev/null; rm -f d; mkdir -p d; "
            "i=$((i+1)); done"
        )
        swaps: list[int] = []

        def swap() -> None:
            r = sb.exec(swapper + "; echo $i", timeout=60)
            swaps.append(int(r.stdout.split()[-1]))

        proc = threading.Thread(target=swap, daemon=True, name="swapper")
        proc.start()
        targets = [str(p) for p in canaries]
        names = [p.name for p in canaries]
        paths_to_try: list[str] = []
        for host_path in targets:
            paths_to_try += [
                f"race/d{host_path}",
                f"race/d/../../..{host_path}",
                f"/proc/self/root{host_path}",
                f"/proc/1/root{host_path}",
                f"/proc/1/cwd/../..{host_path}",
                host_path,
            ]
        reads = writes = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for path in paths_to_try:
                try:
                    data = sb.read_file(path)
                    reads += 1
                    assert secret not in data
                except APIError:
                    pass
                try:
                    sb.write_file(path, b"OVERWRITTEN BY THE SANDBOX")
                    writes += 1
                except APIError:
                    pass
            for name in names:
                for path in (f"race/d/tmp/{name}", f"race/d/{name}"):
                    try:
                        sb.write_file(path, b"X")
                    except APIError:
                        pass
            try:
                for entry in sb.list_files("race/d", recursive=False, include_hidden=True):
                    assert entry.name not in names or entry.size != len(secret)
            except APIError:
                pass
            # The agent's code and runtime are host directories: always read-only.
            for path in ("/.hutch/code/hutch/__init__.py", "/.hutch/python/evil"):
                with pytest.raises(APIError) as e:
                    sb.write_file(path, "pwned")
                assert e.value.code in ("read_only", "file_not_found", "not_a_directory")
            try:
                sb.remove("race/d/etc", recursive=True)  # sandbox files at worst, never the host
            except APIError:
                pass
        sb.exec("touch /workspace/stop")
        proc.join(60)
        assert swaps and swaps[0] > 0, swaps  # the race really ran
        assert reads + writes > 0
    assert _digest(canaries) == before
    assert (server.home / "canary.txt").read_bytes() == secret


def test_dotdot_and_magic_links_stay_inside(server: ServerProcess) -> None:
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
        host_hostname = Path("/etc/hostname").read_text() if os.path.exists("/etc/hostname") else ""
        inside = sb.read_file("../../../../../etc/hostname", text=True)
        assert inside == sb.read_file("/etc/hostname", text=True)
        assert sb.read_file("/proc/self/root/etc/hostname", text=True) == inside
        assert sb.read_file("/proc/1/root/etc/hostname", text=True) == inside
        if host_hostname.strip():
            assert inside.strip() != host_hostname.strip() or inside.strip() == sb.id
        # The server's own files are not reachable under any name.
        for path in (str(server.home / "hutch.db"), f"/proc/1/root{server.home}"):
            assert not sb.exists(path)
