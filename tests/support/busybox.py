"""A bare busybox image: only a static /bin/busybox, no libc, no Python.

It proves that the agent runs in any image (DESIGN.md): nothing in it can help the agent along.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from hutch.runtime.images._store import Image, ImageConfig, ImageStore

BUSYBOX = Path("/bin/busybox")
BUSYBOX_CONFIG = ImageConfig(
    env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"),
    working_dir="/workspace",
    user="root",
)


def make_busybox_rootfs(dest: Path) -> Path:
    """Builds a busybox rootfs at `dest` (which must not exist yet) and returns it."""
    if not _is_static(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is missing or not static: `apt-get install busybox-static`")
    dest.mkdir()
    for d, mode in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("workspace", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ]:
        (dest / d).mkdir(parents=True, exist_ok=True)
        os.chmod(dest / d, mode)  # mkdir's mode is cut by the umask; 1777 needs chmod anyway
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    # What `busybox --install -s` does, without running busybox inside the rootfs.
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = dest / applet
        if applet != "bin/busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (dest / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (dest / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return dest


def add_busybox_image(store: ImageStore, name: str = "busybox") -> Image:
    """Stores a fresh busybox rootfs as `name` (the same content id each time)."""
    with tempfile.TemporaryDirectory(prefix="hutch-busybox-") as tmp:
        rootfs = make_busybox_rootfs(Path(tmp) / "rootfs")
        return store.add_rootfs(name, rootfs, BUSYBOX_CONFIG, move=True)


def _is_static(path: Path) -> bool:
    """An x86-64/aarch64 ELF (64-bit, little endian) with no PT_INTERP: it needs no loader."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if header[:6] != b"\x7fELF\x02\x01":
                return False
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))
