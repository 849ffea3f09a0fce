"""Host files of a sandbox: its agent socket, its /etc/hosts and resolv.conf, and the dirs
the runtime keeps for it (modes exact whatever the umask)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat
from pathlib import Path

from hutch.runtime.container._errors import SandboxRuntimeError
from hutch.runtime.container._nft import NetworkPolicy


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at `path` that only root can connect to, replacing any old one.

    Bound in a private directory and renamed into place: there is never a moment when the
    socket exists at `path` with the umask's looser mode.
    """
    private = path.parent / f".sock-{secrets.token_hex(4)}"
    private.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        staged = private / "s"
        sock.bind(str(staged))
        os.chmod(staged, 0o600)
        sock.listen(512)
        os.rename(staged, path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(private / "s")  # only there if the rename did not happen
        os.rmdir(private)
    return sock


def make_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """mkdir -p with exactly `mode`, whatever the umask."""
    path.mkdir(mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def remove_dir(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def add_mode(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & bits != bits:
        os.chmod(path, mode | (bits & 0o111))


def check_traversable(directory: Path) -> None:
    for path in (directory, *directory.parents):
        if not path.stat().st_mode & stat.S_IXOTH:
            raise SandboxRuntimeError(
                f"{path} is not searchable by others (o+x), so sandboxes, whose root is an "
                f"unprivileged host uid, cannot reach their root filesystem under it: "
                f"chmod o+x {path}, or put HUTCH_HOME elsewhere"
            )


def rewrite_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


def read_text_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def etc_hosts(hostname: str) -> str:
    return (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )


_FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")


RESOLV_MARKER = "# Written by Hutch for this sandbox's network policy.\n"


def resolv_conf(host: str, policy: NetworkPolicy | None = None) -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from the sandbox's
    network namespace), falling back to public resolvers as Docker does.

    With no egress at all (network="none", no allow list) the resolver is 127.0.0.1, where
    nothing listens: lookups fail at once. A remote resolver would be refused by nftables too,
    but the kernel rate-limits those ICMP errors (1/s per destination), so every other lookup
    waited out the 5 s DNS timeout (ipykernel's start-up does several).
    """
    if policy is not None and not policy.internet and not policy.allow:
        return (
            RESOLV_MARKER + "# network=none: no name server is reachable.\nnameserver 127.0.0.1\n"
        )
    lines = []
    servers = 0
    for line in host.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            if words[1].startswith("127.") or words[1] == "::1":
                continue
            servers += 1
        lines.append(line)
    if servers == 0:
        lines += [f"nameserver {ns}" for ns in _FALLBACK_NAMESERVERS]
    return RESOLV_MARKER + "\n".join(lines) + "\n"
