"""The host's Debian mirror, as the default image's build uses it (parsers are pure).

The image is bootstrapped from the mirror the host is configured for (a snapshot or a local
mirror works offline), and keeps that mirror in its own sources.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_FALLBACK_MIRROR = "http://deb.debian.org/debian"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class AptSource:
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_deb822_sources(text: str) -> list[AptSource]:
    """The `Types: deb` entries of a deb822 `.sources` file."""
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            sources.append(
                AptSource(
                    tuple(fields.get("uris", "").split()),
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                )
            )
    return sources


def parse_sources_list(text: str) -> list[AptSource]:
    """The `deb` lines of a one-line-style `sources.list`."""
    sources = []
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0])
        words = line.split()
        if len(words) >= 3 and words[0] == "deb":
            sources.append(AptSource((words[1],), (words[2],), tuple(words[3:])))
    return sources


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    sources = []
    if (etc_apt / "sources.list").is_file():
        sources += parse_sources_list((etc_apt / "sources.list").read_text())
    for path in sorted((etc_apt / "sources.list.d").glob("*.list")):
        sources += parse_sources_list(path.read_text())
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        sources += parse_deb822_sources(path.read_text())
    return sources


def image_apt_sources(host: Sequence[AptSource], suite: str) -> tuple[str, str]:
    """(the mirror for debootstrap, the image's deb822 `debian.sources`) from the host's sources.

    The image uses the host's mirrors for `suite`, `suite-updates` and `suite-security` (so a
    mirror or proxy configured on the host works in the build and in sandboxes), main only.
    """
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    by_uri: dict[str, list[str]] = {}
    for source in host:
        for uri in source.uris:
            for s in source.suites:
                if s in wanted and s not in by_uri.setdefault(uri.rstrip("/"), []):
                    by_uri[uri.rstrip("/")].append(s)
    mirror = next((uri for uri, suites in by_uri.items() if suite in suites), _FALLBACK_MIRROR)
    if not any(suite in s for s in by_uri.values()):
        by_uri = {
            _FALLBACK_MIRROR: [suite, f"{suite}-updates"],
            "http://deb.debian.org/debian-security": [f"{suite}-security"],
        }
    stanzas = [
        f"Types: deb\nURIs: {uri}\nSuites: {' '.join(suites)}\nComponents: main\n"
        f"Signed-By: {_KEYRING}\n"
        for uri, suites in by_uri.items()
        if suites
    ]
    return mirror, "\n".join(stanzas)


def host_apt_acquire_settings() -> str:
    """The host's Acquire::Check-Valid-Until/Check-Date settings, as an apt.conf snippet.

    A snapshot mirror's Release files are past their Valid-Until date: if the host says to accept
    that, the image (which uses the same mirror) must too.
    """
    try:
        dump = subprocess.run(
            ["apt-config", "dump", "Acquire"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    keep = ("Acquire::Check-Valid-Until ", "Acquire::Check-Date ")
    return "".join(line + "\n" for line in dump.splitlines() if line.startswith(keep))
