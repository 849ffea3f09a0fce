"""Host files of a sandbox: its agent socket, its /etc/hosts and resolv.conf, and the dirs
the runtime keeps for it (modes exact whatever the umask)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

from hutch.runtime.container._errors import SandboxRuntimeError
from hutch.runtime.container._nft import NetworkPolicy


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at `path` that only root can connect to, replacing any old one.

    The socket's own mode is set before its bind: Linux gives the file it binds that mode
    less the umask, so there is never a moment when the socket exists with a looser mode.
    Bound under a staged name beside `path` and renamed into place. NB: not in a private
    directory made and removed for it, as before: that mkdir and rmdir on the host's disk
    took 0.3-2 ms of each create here (ext4 with `discard`).
    """
    staged = path.parent / f".{path.name}-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(staged))
        try:
            os.chmod(staged, 0o600)  # exactly, whatever the umask took off (never more)
            sock.listen(512)
            os.rename(staged, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            raise
    except BaseException:
        sock.close()
        raise
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


def etc_hosts(hostname: str, pinned: Sequence[tuple[str, str]] = ()) -> str:
    return pin_hosts(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n",
        pinned,
    )


_PINNED_BEGIN = "# hutch: allowed host names (network_allow), as the server resolved them\n"
_PINNED_END = "# hutch: end of allowed host names\n"


def pin_hosts(text: str, pinned: Sequence[tuple[str, str]]) -> str:
    """/etc/hosts `text` with its block of pinned (name, address) pairs replaced by `pinned`
    (removed if none); the sandbox's own lines are kept as they are.

    A sandbox with network="none" has no name server (see `resolv_conf`): its allowed host
    names resolve through this file alone, to the addresses nftables lets it reach.
    """
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        if line == _PINNED_BEGIN:
            inside = True
        elif line == _PINNED_END:
            inside = False
        elif not inside:
            kept.append(line)
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    if pinned:
        kept += [_PINNED_BEGIN, *(f"{address}\t{name}\n" for name, address in pinned), _PINNED_END]
    return "".join(kept)


_FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")


RESOLV_MARKER = "# Written by Hutch for this sandbox's network policy.\n"


def resolv_conf(host: str, policy: NetworkPolicy | None = None) -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from the sandbox's
    network namespace), falling back to public resolvers as Docker does.

    With network="none" the resolver is 127.0.0.1, where nothing listens: lookups fail at
    once (allowed host names resolve through /etc/hosts: `pin_hosts`). A remote resolver
    would be refused by nftables too, but the kernel rate-limits those ICMP errors (1/s per
    destination), so every other lookup waited out the 5 s DNS timeout (ipykernel's start-up
    does several). Only a name server that `network_allow` names itself (a CIDR holding it)
    stays: the user opened it.
    """
    lines = []
    servers = 0
    for line in host.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            if words[1].startswith("127.") or words[1] == "::1":
                continue
            if policy is not None and not policy.internet and not _allowed(words[1], policy):
                continue
            servers += 1
        lines.append(line)
    if policy is not None and not policy.internet and servers == 0:
        return (
            RESOLV_MARKER + "# network=none: no name server is reachable.\nnameserver 127.0.0.1\n"
        )
    if servers == 0:
        lines += [f"nameserver {ns}" for ns in _FALLBACK_NAMESERVERS]
    return RESOLV_MARKER + "\n".join(lines) + "\n"


def _allowed(address: str, policy: NetworkPolicy) -> bool:
    """Whether `address` is in the policy's allow list and not in its deny list."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False

    def within(cidrs: Sequence[str]) -> bool:
        return any(ip in ipaddress.IPv4Network(c) for c in cidrs)

    return within(policy.allow) and not within(policy.deny)
