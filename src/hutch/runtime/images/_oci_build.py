"""`hutch image build -f Dockerfile [context]`: buildah (chroot isolation, private storage),
FROM `scratch`, a registry image, or an image Hutch already has (exported to a one-layer OCI
layout with its ownership unshifted), stored through the same path as a pull."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE
from hutch.runtime.images._build_output import HostPathScrubber, build_scrubber
from hutch.runtime.images._oci_import import (
    ImageInvalid,
    host_architecture,
    parse_oci_layout,
    store_parsed,
)
from hutch.runtime.images._store import Image, ImageNotFound, ImageStore

_FROM_RE = re.compile(r"^(\s*FROM\s+)(?:--platform=\S+\s+)?(\S+)(.*)$", re.IGNORECASE)


class Output(Protocol):
    """Where buildah's output goes (a text file such as sys.stderr, or a line relay)."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


class BuildError(RuntimeError):
    """buildah failed; the message has the end of its output (`tail`: its last lines)."""

    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.tail = tail or []


# containers-image transports that name host paths or daemons; an API build must only name
# Hutch images, registry images, earlier stages or scratch.
_TRANSPORTS = frozenset(
    {
        "oci",
        "oci-archive",
        "dir",
        "docker-archive",
        "docker-daemon",
        "containers-storage",
        "ostree",
        "sif",
        "tarball",
    }
)
_FROM_OPTION_RE = re.compile(r"(?i)(?:--from=|\bfrom=)([^\s,]+)")


def _names_a_transport(ref: str) -> bool:
    scheme, sep, rest = ref.partition(":")
    if not sep:
        return False
    scheme = scheme.lower().strip("\"'")
    return scheme in _TRANSPORTS or (scheme == "docker" and not rest.startswith("//"))


_DIRECTIVE_RE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.*?)[ \t]*$")


class _Instruction(NamedTuple):
    line: int
    keyword: str
    args: str


def _escape_directive(lines: list[str]) -> str | None:
    """The `# escape=` parser directive's character, if the file opens with one."""
    for line in lines:
        m = _DIRECTIVE_RE.match(line.strip())
        if not m:
            return None
        if m.group(1).lower() == "escape":
            return m.group(2)[:1] or None
    return None


def _instructions(text: str, escape: str) -> list[_Instruction]:
    """The Dockerfile's instructions as buildah's parser reads them with `escape` as the
    escape character: lines split at `\\n`, comments skipped, continuation lines joined."""
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    out: list[_Instruction] = []
    i = 0
    while i < len(lines):
        start, line = i, lines[i].lstrip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while (m := continued.search(line)) and i < len(lines):
            line = line[: m.start()]
            nxt = lines[i]
            i += 1
            if nxt.strip().startswith("#") or not nxt.strip():
                line += escape  # comments and blank lines inside a continuation are skipped
                continue
            line += nxt
        keyword, *rest = line.strip().split(None, 1)
        out.append(_Instruction(start + 1, keyword.upper(), rest[0] if rest else ""))
    return out


def _refused(ins: _Instruction, why: str) -> ValueError:
    return ValueError(f"the Dockerfile's line {ins.line} ({ins.keyword} {ins.args[:200]}): {why}")


def _leading_flags(args: str) -> list[tuple[str, str | None]]:
    """The `--name[=value]` flags before an instruction's arguments (a flag given without `=`
    takes the next word as its value too, to be safe)."""
    words = args.split()
    flags: list[tuple[str, str | None]] = []
    for i, word in enumerate(words):
        if not word.startswith("--"):
            break
        name, eq, value = word[2:].partition("=")
        nxt = words[i + 1] if i + 1 < len(words) else None
        flags.append((name.strip("\"'").lower(), value if eq else nxt))
    return flags


_HOST_REF = (
    "a build through the API may use Hutch images, earlier stages or scratch, not a "
    "transport that reads the server's host"
)


def _check_instruction(ins: _Instruction) -> None:
    keyword, args = ins.keyword, ins.args
    if keyword == "ONBUILD":
        inner, *rest = args.split(None, 1) or [""]
        _check_instruction(_Instruction(ins.line, inner.upper(), rest[0] if rest else ""))
        return
    if keyword == "FROM":
        if "$" in args:
            raise _refused(
                ins, "a build through the API takes no variables in FROM: name the image"
            )
        words = [w for w in args.split() if not w.startswith("--")]
        if words and _names_a_transport(words[0]):
            raise _refused(ins, f"it names {words[0]!r}: {_HOST_REF}")
    elif keyword in ("COPY", "ADD"):
        for name, value in _leading_flags(args):
            if name == "from" and value is not None:
                if "$" in value:
                    raise _refused(ins, "a build through the API takes no variables in --from=")
                if _names_a_transport(value):
                    raise _refused(ins, f"it names {value!r}: {_HOST_REF}")
        if "://" in args or "git@" in args:
            raise _refused(
                ins,
                "a build through the API fetches nothing from the network (no URL or git "
                "source): put the file in the build context and COPY it",
            )
        if keyword == "ADD" and "$" in args:
            raise _refused(ins, "a build through the API takes no variables in ADD: use COPY")
    elif keyword == "RUN" and args.startswith("--"):
        raise _refused(
            ins,
            "a build through the API takes no RUN flags (--mount, --network, --security): "
            "COPY what the step needs into an earlier stage instead",
        )


def check_untrusted_dockerfile(text: str) -> None:
    """Refuse what would let a Dockerfile sent over the API reach the host: `FROM`,
    `COPY --from=` or `RUN --mount=...,from=` naming a host path or daemon through a transport
    (`oci:/path`, `dir:/`, `docker-archive:/file`, ...), variables in `FROM`/`--from=`/`ADD`
    (which could expand to one), `ADD` of a URL or git repository, and any `RUN` flag
    (`--mount` binds or caches reach the host through buildah's CVE-2024-1753/-9675).

    Instructions are read as buildah's parser reads them (continuation lines joined, comments
    skipped), once with each escape character a `# escape=` directive may set, and refused if
    either reading is refused.

    Raises:
        ValueError: the first such instruction, and what to do instead.
    """
    escapes = {"\\", "`"}
    directive = _escape_directive(text.split("\n"))
    if directive is not None:
        escapes.add(directive)
    for escape in sorted(escapes):
        for ins in _instructions(text, escape):
            _check_instruction(ins)
    # A second, cruder wall: any physical line that looks like a FROM or from= naming one.
    refs = [m.group(2) for line in text.splitlines() if (m := _FROM_RE.match(line))]
    refs += _FROM_OPTION_RE.findall(text)
    for ref in refs:
        if _names_a_transport(ref):
            raise ValueError(f"the Dockerfile names {ref!r}: {_HOST_REF}")


def check_offline_bases(text: str, has_image: Callable[[str], bool]) -> None:
    """Refuse a `FROM` that an API build (which has no network) cannot have: anything but
    `scratch`, an earlier stage or an image `has_image` knows.

    Raises:
        ValueError: the first such FROM, and what to do instead.
    """
    stages: set[str] = set()
    for ins in _instructions(text, _escape_directive(text.split("\n")) or "\\"):
        if ins.keyword != "FROM":
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        if not words:
            continue  # buildah says what is wrong
        ref = words[0]
        if ref.lower() != "scratch" and ref.lower() not in stages and not has_image(ref):
            raise _refused(
                ins,
                f"the server has no image {ref!r}, and a build through the API has no "
                "network: pull it first (POST /v1/images/pull, `hutch image pull`), or build "
                "FROM an image the server has, an earlier stage or scratch",
            )
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())


def _unshift(info: tarfile.TarInfo) -> tarfile.TarInfo:
    for attr in ("uid", "gid"):
        value = getattr(info, attr)
        if HOST_ID_BASE <= value < HOST_ID_BASE + ID_RANGE:
            setattr(info, attr, value - HOST_ID_BASE)
    info.uname = info.gname = ""
    return info


def export_oci_layout(image: Image, layout: Path) -> None:
    """Write `image` as a one-layer OCI layout at `layout` (tag `image`), ownership as seen
    inside a sandbox."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer_tmp = layout / "layer.tar"
    with tarfile.open(layer_tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(image.rootfs)):
            tar.add(image.rootfs / entry, arcname=entry, filter=_unshift)

    def put(data: bytes | Path) -> tuple[str, int]:
        if isinstance(data, Path):
            with open(data, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            size = data.stat().st_size
            os.rename(data, blobs / digest)
        else:
            digest = hashlib.sha256(data).hexdigest()
            size = len(data)
            (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", size

    layer_digest, layer_size = put(layer_tmp)
    c = image.config
    config = {
        "architecture": host_architecture(),
        "os": "linux",
        "config": {
            "Env": list(c.env),
            "WorkingDir": c.working_dir,
            "User": c.user,
            "Entrypoint": list(c.entrypoint) or None,
            "Cmd": list(c.cmd) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = put(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = put(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "image"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def _rewrite_from(
    dockerfile: str, store: ImageStore, work: Path, bases: dict[str, str] | None = None
) -> str:
    """Point every `FROM <hutch image>` at an exported OCI layout of it (`bases` gets each
    `oci:<layout>:image` -> the reference it replaced)."""
    lines = []
    exported: dict[str, Path] = {}
    for line in dockerfile.splitlines():
        m = _FROM_RE.match(line)
        if m and m.group(2).lower() != "scratch":
            ref = m.group(2)
            try:
                image = store.get(ref)
            except ImageNotFound:
                image = None
            if image is not None:
                if image.id not in exported:
                    layout = work / f"from-{len(exported)}"
                    export_oci_layout(image, layout)
                    exported[image.id] = layout
                base = f"oci:{exported[image.id]}:image"
                if bases is not None:
                    bases[base] = ref
                line = f"{m.group(1)}{base}{m.group(3)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def build_image(
    store: ImageStore,
    dockerfile: Path,
    context: Path,
    name: str,
    *,
    out: Output,
    source: str | None = None,
    untrusted: bool = False,
) -> Image:
    """Build with buildah and store as `name`. buildah's output goes to `out` as it comes.

    An `untrusted` build (one sent over the API) runs its RUN steps in a runc container whose
    root is the sandboxes' unprivileged host id range, with no network; otherwise with
    buildah's chroot isolation as real root (what `hutch image build` on the host does).

    Raises:
        BuildError: buildah failed (the message has its last lines).
        ImageInvalid: the result could not be read.
    """
    if not context.is_dir():
        raise BuildError(f"build context {context} is not a directory")
    try:
        text = dockerfile.read_text()
    except OSError as e:
        raise BuildError(f"cannot read {dockerfile}: {e}") from None
    with store.staging() as stage:
        rewritten = stage / "Dockerfile"
        bases: dict[str, str] = {}
        rewritten.write_text(_rewrite_from(text, store, stage, bases))
        base = [
            "buildah",
            "--root",
            str(stage / "storage"),
            "--runroot",
            str(stage / "run"),
            "--storage-driver",
            "vfs",
        ]
        scrub: HostPathScrubber | None = None
        if untrusted:
            idmap = f"0:{HOST_ID_BASE}:{ID_RANGE}"
            isolation = ["--isolation", "oci", "--userns-uid-map", idmap]
            isolation += ["--userns-gid-map", idmap, "--network", "none"]
            # An API client gets buildah's lines without the server's paths in them.
            scrub = build_scrubber(
                bases=bases,
                context=str(context),
                stage=str(stage),
                store_root=str(store.root),
                idmap=idmap,
            )
        else:
            isolation = ["--isolation", "chroot"]
        bud = [*base, "bud", *isolation, "--layers=false", "-f", str(rewritten)]
        bud += ["-t", "hutch-build", str(context)]
        # `--network none` covers only RUN steps: buildah itself fetches `ADD <url>`, git
        # sources and registry images in the host's network namespace (the host's loopback,
        # the cloud metadata address, ...). An API build runs buildah in a new network
        # namespace with nothing but a down `lo`: its FROM is a Hutch image or scratch.
        _run(bud, out, offline=untrusted, scrub=scrub)
        layout = stage / "result"
        push = [*base, "push", "hutch-build", f"oci:{layout}:image"]
        _run(push, out, offline=untrusted, scrub=scrub)
        parsed = parse_oci_layout(layout, "image")
        image = store_parsed(
            store, name, parsed, stage, labels={"hutch.built-from": source or str(dockerfile)}
        )
        _run([*base, "rm", "--all"], None)
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True)
        return image


def _run(
    cmd: list[str],
    out: Output | None,
    *,
    offline: bool = False,
    scrub: HostPathScrubber | None = None,
) -> None:
    env = dict(os.environ)
    if "--isolation" not in cmd:
        env["BUILDAH_ISOLATION"] = "chroot"
    argv = ["unshare", "--net", "--", *cmd] if offline else cmd
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if scrub is not None:
                line = scrub(line)
            if out is not None:
                out.write(line)
                out.flush()
            tail = (tail + [line.rstrip()])[-15:]
    if proc.returncode != 0:
        raise BuildError(f"{shlex.join(cmd[:1] + cmd[7:8])} failed:\n" + "\n".join(tail), tail)


__all__ = [
    "BuildError",
    "ImageInvalid",
    "build_image",
    "check_offline_bases",
    "check_untrusted_dockerfile",
    "export_oci_layout",
]
