"""buildah's output as an API client may see it: without the server's host paths.

buildah names what it was given: the exported base image (`FROM oci:<image store>/tmp/<id>/
from-0:image`), the context directory in the store's staging area, its storage root, the runc
binary, the id mapping it ran RUN steps under. None of that is the client's business, and it
maps the server's disk. Each line is rewritten before it is streamed or kept for the error:
the base layout back to the image name the Dockerfile used, every other host path to a short
placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


class HostPathScrubber:
    """Replaces known host strings in buildah's lines (the longest first)."""

    def __init__(self, replacements: Mapping[str, str]) -> None:
        pairs = sorted(((k, v) for k, v in replacements.items() if k), key=lambda kv: -len(kv[0]))
        self._map = dict(pairs)
        self._re = re.compile("|".join(re.escape(k) for k, _ in pairs)) if pairs else None

    def __call__(self, line: str) -> str:
        if self._re is None:
            return line
        return self._re.sub(lambda m: self._map[m[0]], line)


def build_scrubber(
    *,
    bases: Mapping[str, str],
    context: str,
    stage: str,
    store_root: str,
    idmap: str | None,
) -> HostPathScrubber:
    """`bases`: `oci:<layout>:image` -> the Dockerfile's own reference."""
    replacements: dict[str, str] = dict(bases)
    replacements[context.rstrip("/")] = "<context>"
    replacements[stage.rstrip("/")] = "<build>"
    replacements[store_root.rstrip("/")] = "<images>"
    replacements["/usr/bin/runc"] = "runc"
    replacements["/usr/sbin/runc"] = "runc"
    if idmap:
        replacements[idmap] = "<id map>"
    return HostPathScrubber(replacements)
