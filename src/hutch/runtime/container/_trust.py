"""Extra CA certificates in a sandbox's trust store (a TLS-inspecting proxy's CA, a company CA).

The extra CAs of a sandbox are the server's (`RuntimeConfig.ca_certificates`, for every
sandbox) and its own (`SandboxSpec.ca_certificates`, kept in its storage's `etc/` so that a
restart, a snapshot and a fork keep them). Before runc starts, they are appended to the image's
bundle in the sandbox's own overlay (the shared image is never touched):

- `/etc/ssl/certs/ca-certificates.crt`: the image's bundle plus the extras (what OpenSSL,
  curl, git, wget and Debian's Python read);
- `/usr/local/share/ca-certificates/hutch-<hash>.crt`, one per extra CA, where the image has
  that directory: an `update-ca-certificates` in the sandbox keeps them;
- the variables Python (requests, pip, ssl), Node and curl read point at the bundle.

No sandbox process runs while the files are written, but the tree may hold symlinks from the
image or an earlier run: every name is resolved inside the rootfs (RESOLVE_IN_ROOT), never on
the host, and the bundle is replaced by rename, so a symlink there is replaced, not followed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hutch.runtime.container._errors import SandboxStartError
from hutch.runtime.container._safepath import RESOLVE_IN_ROOT, open_beneath

if TYPE_CHECKING:
    from hutch.runtime.container._spec import RuntimeConfig, SandboxSpec

BUNDLE_DIR = "etc/ssl/certs"
BUNDLE_NAME = "ca-certificates.crt"
BUNDLE = "/" + BUNDLE_DIR + "/" + BUNDLE_NAME
LOCAL_DIR = "usr/local/share/ca-certificates"
KEPT = "ca-certificates.pem"  # in the sandbox's etc dir: its own extra CAs
CA_ENV_NAMES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT")
_RESOLVE = RESOLVE_IN_ROOT | 0x02  # RESOLVE_NO_MAGICLINKS


def prepare(rootfs: Path, etc: Path, spec: SandboxSpec, config: RuntimeConfig, owner: int) -> None:
    """Keep a new sandbox's own CAs, then put all its extra CAs in its mounted rootfs."""
    keep(etc, spec.ca_certificates)
    try:
        install(rootfs, extra_cas(etc, config.ca_certificates), owner)
    except OSError as exc:
        raise SandboxStartError(
            f"the extra CA certificates could not be added to the image's {BUNDLE}: {exc}"
        ) from exc


def split_pem(text: str) -> list[str]:
    """The PEM blocks of `text`, each stripped and ending in a newline."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN "):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith("-----END "):
                blocks.append("\n".join(current) + "\n")
                current = []
    return blocks


def keep(etc: Path, own: Sequence[str]) -> None:
    """Keep a new sandbox's own extra CAs with its storage (nothing if it has none)."""
    if own:
        (etc / KEPT).write_text("".join(own))


def extra_cas(etc: Path, server: Sequence[str]) -> list[str]:
    """The sandbox's extra CAs: the server's, then its own (each once)."""
    try:
        own = split_pem((etc / KEPT).read_text())
    except OSError:
        own = []
    found: list[str] = []
    for pem in (*server, *own):
        if pem not in found:
            found.append(pem)
    return found


def ca_env(extras: Sequence[str]) -> dict[str, str]:
    """The variables that make Python, pip, curl and Node trust the bundle."""
    if not extras:
        return {}
    env = dict.fromkeys(CA_ENV_NAMES, BUNDLE)
    # Node keeps its own built-in roots and adds this file's: the bundle has them all.
    env["NODE_EXTRA_CA_CERTS"] = BUNDLE
    return env


def install(rootfs: Path, extras: Sequence[str], owner: int) -> None:
    """Append `extras` to the bundle of the mounted (not yet running) rootfs, as the sandbox's
    root (`owner`, a host uid) would own it. Nothing to do if the bundle has them already."""
    if not extras:
        return
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        bundle = _read(root, f"{BUNDLE_DIR}/{BUNDLE_NAME}")
        missing = [pem for pem in extras if pem not in bundle]
        if missing:
            if bundle and not bundle.endswith("\n"):
                bundle += "\n"
            certs = _make_dirs(root, BUNDLE_DIR, owner)
            try:
                _replace(certs, BUNDLE_NAME, bundle + "".join(missing), owner)
            finally:
                os.close(certs)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            local = open_beneath(root, LOCAL_DIR, os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
            try:
                for pem in extras:
                    name = f"hutch-{hashlib.sha256(pem.encode()).hexdigest()[:16]}.crt"
                    _replace(local, name, pem, owner)
            finally:
                os.close(local)
    finally:
        os.close(root)


def _read(root: int, path: str) -> str:
    try:
        fd = open_beneath(root, path, os.O_RDONLY, _RESOLVE)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return ""
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read(64 << 20).decode("utf-8", errors="replace")


def _make_dirs(root: int, path: str, owner: int) -> int:
    """An fd of directory `path` in the rootfs, made (owned by `owner`) where missing. Each
    step is resolved from the rootfs, so a symlinked directory leads where it would inside."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        try:
            fd = open_beneath(root, "/".join(parts[:i]), os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
        except FileNotFoundError:
            parent = "/".join(parts[: i - 1]) or "."
            parent_fd = open_beneath(root, parent, os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
            try:
                os.mkdir(parts[i - 1], 0o755, dir_fd=parent_fd)
                os.chown(parts[i - 1], owner, owner, dir_fd=parent_fd, follow_symlinks=False)
            finally:
                os.close(parent_fd)
            fd = open_beneath(root, "/".join(parts[:i]), os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
        if i == len(parts):
            return fd
        os.close(fd)
    raise ValueError("empty path")


def _replace(directory: int, name: str, text: str, owner: int) -> None:
    tmp = f".hutch-{secrets.token_hex(6)}"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
        dir_fd=directory,
    )
    try:
        with os.fdopen(fd, "w", closefd=False) as f:
            f.write(text)
        os.fchown(fd, owner, owner)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
