"""Images built inside the tests: OCI layouts made with umoci, pushed with skopeo to a local
`docker-registry` (the Debian package) started on loopback with a temp config.

Extend `SMOKE_IMAGES` users by adding capabilities to `smoke_test` in tests/test_image_registry.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.busybox import make_busybox_rootfs

PYTHON_FILES = (
    "usr/bin/python3.11",
    "usr/lib/python3.11",
    "usr/lib/x86_64-linux-gnu/libm.so.6",
    "usr/lib/x86_64-linux-gnu/libz.so.1",
    "usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
    "usr/lib/x86_64-linux-gnu/libexpat.so.1",
    "usr/lib/x86_64-linux-gnu/libc.so.6",
    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "usr/lib/x86_64-linux-gnu/libffi.so.8",
    "usr/lib/x86_64-linux-gnu/libffi.so.8.1.2",
    "usr/bin/dash",
    "usr/bin/ls",
    "usr/bin/id",
    "usr/bin/cat",
    "usr/bin/env",
    "usr/lib/x86_64-linux-gnu/libselinux.so.1",
    "usr/lib/x86_64-linux-gnu/libpcre2-8.so.0",
    "usr/lib/x86_64-linux-gnu/libpcre2-8.so.0.11.2",
)


def make_python_rootfs(dest: Path, default_rootfs: Path, *, padding_mb: int = 0) -> Path:
    """A small Debian rootfs with python3 (files from the default image), a user `app` (1000)
    and /app; ownership as inside a sandbox (the default image's is shifted: reset to root)."""
    dest.mkdir()
    for d in ("usr/bin", "usr/lib/x86_64-linux-gnu", "etc", "tmp", "root", "app", "proc", "sys"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    for rel in PYTHON_FILES:
        src = default_rootfs / rel
        if not os.path.lexists(src):
            continue
        target = dest / rel
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, target, symlinks=True, ignore=shutil.ignore_patterns("test"))
        else:
            shutil.copy2(src, target)  # libraries: the file, not the version symlink
    for link, to in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]:
        os.symlink(to, dest / link)
    (dest / "usr/lib64").mkdir()
    os.symlink(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", dest / "usr/lib64/ld-linux-x86-64.so.2"
    )
    os.symlink("python3.11", dest / "usr/bin/python3")
    os.symlink("python3.11", dest / "usr/bin/python")
    os.symlink("dash", dest / "usr/bin/sh")
    (dest / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n"
    )
    (dest / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    if padding_mb:
        with open(dest / "usr/lib/padding.bin", "wb") as f:
            f.write(os.urandom(padding_mb << 20))
    subprocess.run(["chown", "-hR", "0:0", str(dest)], check=True)
    os.chown(dest / "app", 1000, 1000)
    return dest


def make_oci_layout(
    layout: Path, tag: str, rootfs: Path, config_args: Sequence[str] = (), work: Path | None = None
) -> None:
    """Put `rootfs` as one layer into the OCI layout `layout` (created if missing) as `tag`,
    with `umoci config` options `config_args` (e.g. `--config.env=A=b`)."""
    if not (layout / "index.json").exists():
        _run(["umoci", "init", "--layout", str(layout)])
    image = f"{layout}:{tag}"
    _run(["umoci", "new", "--image", image])
    bundle = (work or layout.parent) / f"bundle-{tag}"
    _run(["umoci", "unpack", "--image", image, str(bundle)])
    target = bundle / "rootfs"
    for entry in os.listdir(rootfs):
        _run(["cp", "-a", str(rootfs / entry), str(target / entry)])
    _run(["umoci", "repack", "--image", image, str(bundle)])
    shutil.rmtree(bundle)
    if config_args:
        _run(["umoci", "config", "--image", image, *config_args])


def skopeo_copy(src: str, dest: str) -> None:
    _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", src, dest])


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_registry(workdir: Path) -> Iterator[str]:
    """A `docker-registry` on loopback (plain HTTP, no auth); yields its `host:port`."""
    port = _free_port()
    storage = workdir / "registry-data"
    storage.mkdir(parents=True, exist_ok=True)
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://{addr}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "docker-registry did not start: " + (workdir / "registry.log").read_text()
                )
            time.sleep(0.1)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


__all__ = [
    "local_registry",
    "make_busybox_rootfs",
    "make_oci_layout",
    "make_python_rootfs",
    "skopeo_copy",
]
