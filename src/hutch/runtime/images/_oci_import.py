"""OCI images in: `docker save` tarballs, OCI archives and layouts, registry pulls (skopeo).

An image's layers are applied in order into a staging rootfs in the image store's tmp/ (so a
failure anywhere leaves nothing stored), then the flattened tree is handed to
`ImageStore.add_rootfs`, which shifts ownership into the sandbox id range and commits it
atomically.

Layers are untrusted input. Applying one never writes outside the rootfs: entry names with `..`
are refused, every parent directory is resolved inside the rootfs (a symlink in the tree or in an
earlier entry is followed as the sandbox would, clamped to the rootfs root), hard links must point
at a file inside the rootfs, and device nodes are dropped (runc gives every sandbox its own /dev).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hutch.runtime.images._store import Image, ImageConfig, ImageStore

_MAX_SYMLINK_HOPS = 40
_CAPS_XATTR = "security.capability"
_OPAQUE = ".wh..wh..opq"
_WHITEOUT = ".wh."


class ImageInvalid(ValueError):
    """The archive or image is not something Hutch can store (corrupt, truncated, unsafe)."""

    code = "image_invalid"


class ImageArchitectureError(ImageInvalid):
    """The image is built for another CPU architecture than this host's."""

    code = "image_architecture"


class RegistryError(RuntimeError):
    """The registry refused or could not be reached; the message is the registry's."""


def host_architecture() -> str:
    """This host's architecture in OCI spelling (amd64, arm64, ...)."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


@dataclass(frozen=True)
class ParsedImage:
    """An image's config and its layer blobs (paths on disk), bottom layer first."""

    config: ImageConfig
    layers: tuple[Path, ...]
    labels: Mapping[str, str]
    tags: tuple[str, ...] = ()


# -- reading archives ----------------------------------------------------------------------------


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ImageInvalid(f"the archive has no {what}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageInvalid(f"the archive's {what} is not valid JSON: {e}") from None


def _blob(layout: Path, digest: object, *, verify: bool = True) -> Path:
    if not isinstance(digest, str) or ":" not in digest:
        raise ImageInvalid(f"bad blob digest {digest!r}")
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or not hexdigest.isalnum() or len(hexdigest) != 64:
        raise ImageInvalid(f"unsupported blob digest {digest!r} (only sha256)")
    path = layout / "blobs" / algo / hexdigest
    if not path.is_file():
        raise ImageInvalid(f"the archive is missing blob {digest} (truncated?)")
    if verify:
        with open(path, "rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        if actual != hexdigest:
            raise ImageInvalid(f"blob {digest} is corrupt (its content has digest sha256:{actual})")
    return path


def _platform_ok(entry: Mapping[str, Any]) -> bool:
    plat = entry.get("platform") or {}
    return plat.get("architecture", host_architecture()) == host_architecture() and plat.get(
        "os", "linux"
    ) in ("linux", "")


def parse_oci_layout(layout: Path, tag: str | None = None) -> ParsedImage:
    """Read an OCI image layout directory (index.json, blobs/)."""
    index = _load_json(layout / "index.json", "index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise ImageInvalid("the OCI index lists no manifests")
    if tag is not None:
        tagged = [
            m
            for m in manifests
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
        ]
        manifests = tagged or manifests
    return _resolve_manifest(layout, manifests[0], depth=0)


def _resolve_manifest(layout: Path, descriptor: Mapping[str, Any], depth: int) -> ParsedImage:
    if depth > 4:
        raise ImageInvalid("the OCI index nests too deeply")
    manifest = _load_json(_blob(layout, descriptor.get("digest")), "manifest")
    if not isinstance(manifest, dict):
        raise ImageInvalid("the image manifest is not a JSON object")
    if "manifests" in manifest:  # an index / manifest list: pick this host's platform
        entries = [m for m in manifest["manifests"] if isinstance(m, dict)]
        ours = [m for m in entries if _platform_ok(m)]
        if not ours:
            found = sorted(
                {str((m.get("platform") or {}).get("architecture", "?")) for m in entries}
            )
            raise ImageArchitectureError(
                f"the image has no variant for this host's architecture {host_architecture()} "
                f"(it has: {', '.join(found) or 'none'}); use an image built for "
                f"{host_architecture()}"
            )
        return _resolve_manifest(layout, ours[0], depth + 1)
    config_desc = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config_desc, dict) or not isinstance(layers, list):
        raise ImageInvalid("the image manifest has no config or layers")
    config = _load_json(_blob(layout, config_desc.get("digest")), "image config")
    paths = tuple(_blob(layout, layer.get("digest")) for layer in layers)
    return _from_oci_config(config, paths)


def parse_docker_save(root: Path) -> ParsedImage:
    """Read an unpacked `docker save` tarball (manifest.json, <id>.json, <id>/layer.tar)."""
    manifest = _load_json(root / "manifest.json", "manifest.json")
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise ImageInvalid("the docker archive's manifest.json lists no image")
    entry = manifest[0]
    config = _load_json(_inside(root, entry.get("Config")), "image config")
    layers = entry.get("Layers")
    if not isinstance(layers, list):
        raise ImageInvalid("the docker archive's manifest has no Layers")
    paths = tuple(_inside(root, layer) for layer in layers)
    for p in paths:
        if not p.is_file():
            raise ImageInvalid(f"the archive is missing layer {p.relative_to(root)} (truncated?)")
    tags = tuple(str(t) for t in entry.get("RepoTags") or [])
    parsed = _from_oci_config(config, paths)
    return ParsedImage(parsed.config, parsed.layers, parsed.labels, tags)


def _inside(root: Path, name: object) -> Path:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise ImageInvalid(f"bad path {name!r} in the archive's manifest")
    return root / name


def _from_oci_config(config: Any, layers: tuple[Path, ...]) -> ParsedImage:
    if not isinstance(config, dict):
        raise ImageInvalid("the image config is not a JSON object")
    arch = config.get("architecture") or host_architecture()
    if arch != host_architecture():
        raise ImageArchitectureError(
            f"the image is built for {arch}, this host is {host_architecture()}; "
            f"pull or build the {host_architecture()} variant"
        )
    if config.get("os", "linux") != "linux":
        raise ImageArchitectureError(f"the image is for {config.get('os')}, not linux")
    c = config.get("config") or {}
    if not isinstance(c, dict):
        raise ImageInvalid("the image config's 'config' is not an object")

    def strings(key: str) -> list[str]:
        value = c.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ImageInvalid(f"the image config's {key} is not a list of strings")
        return value

    env = [e for e in strings("Env") if "=" in e]
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    working_dir = c.get("WorkingDir") or "/workspace"
    if not isinstance(working_dir, str) or not working_dir.startswith("/"):
        working_dir = "/workspace"
    user = c.get("User") or "root"
    if not isinstance(user, str):
        raise ImageInvalid("the image config's User is not a string")
    labels_raw = c.get("Labels") or {}
    labels = {str(k): str(v) for k, v in labels_raw.items()} if isinstance(labels_raw, dict) else {}
    try:
        image_config = ImageConfig.from_dict(
            {
                "env": env,
                "working_dir": working_dir,
                "user": user,
                "entrypoint": strings("Entrypoint"),
                "cmd": strings("Cmd"),
            }
        )
    except ValueError as e:
        raise ImageInvalid(str(e)) from None
    return ParsedImage(image_config, layers, labels)


def _safe_extract_outer(archive: Path, dest: Path) -> None:
    """Unpack the outer archive (blobs and manifests only: regular files and dirs)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name.lstrip("/")
                parts = [p for p in name.split("/") if p not in ("", ".")]
                if not parts or ".." in parts:
                    continue
                target = dest.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                elif member.issym() and parts[0] != "blobs":
                    # docker save (newer) links layer dirs to blobs: keep them inside dest.
                    link = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
                    if link.startswith("..") or os.path.isabs(link):
                        raise ImageInvalid(f"archive entry {name!r} links outside the archive")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(member.linkname, target)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        raise ImageInvalid(f"the archive is corrupt or truncated: {e}") from None


def parse_archive(archive: Path, workdir: Path) -> ParsedImage:
    """Unpack `archive` (docker save or OCI archive, optionally gzipped) into `workdir` and
    read it."""
    if not archive.is_file():
        raise ImageInvalid(f"{archive} is not a file")
    _safe_extract_outer(archive, workdir)
    if (workdir / "index.json").is_file():
        return parse_oci_layout(workdir)
    if (workdir / "manifest.json").is_file():
        return parse_docker_save(workdir)
    raise ImageInvalid(
        "not an image archive: expected a `docker save` tarball (manifest.json) or an OCI "
        "archive (index.json)"
    )


# -- applying layers -----------------------------------------------------------------------------


def _open_layer(path: Path) -> tarfile.TarFile:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"\x28\xb5\x2f\xfd":
        raise ImageInvalid("zstd-compressed layers are not supported; push the image with gzip")
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise ImageInvalid(f"layer {path.name[:19]} is not a tar archive: {e}") from None


def _clean_parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageInvalid(f"layer entry {name!r} points outside the image (contains '..')")
    return parts


def resolve_in_root(root: str, parts: list[str]) -> str:
    """The host path of the directory `parts` inside `root`, following symlinks as the sandbox
    would see them (absolute ones relative to `root`, `..` never above it). Missing components
    are returned as they are (the caller creates them)."""
    resolved: list[str] = []
    pending = list(parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise ImageInvalid("too many levels of symbolic links in a layer")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = target.split("/") + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _makedirs_in_root(root: str, parts: list[str]) -> str:
    """Create the directory `parts` inside root (resolving symlinks inside root); returns its
    host path. Whatever non-directory is in the way is replaced."""
    path = resolve_in_root(root, parts)
    current = root
    for part in os.path.relpath(path, root).split("/"):
        if part in (".", ""):
            continue
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):  # resolution replaced every symlink: cannot happen
            raise ImageInvalid(f"cannot resolve {'/'.join(parts)!r} inside the image")
        if not stat.S_ISDIR(st.st_mode):
            _remove(current)
            os.mkdir(current, 0o755)
    return path


def apply_layer(rootfs: Path, layer: Path) -> None:
    """Apply one layer tar (with OCI whiteouts) onto `rootfs`, never writing outside it.

    Raises:
        ImageInvalid: the layer is corrupt, truncated or tries to escape the rootfs.
    """
    root = str(rootfs)
    dir_times: list[tuple[str, float]] = []
    try:
        with _open_layer(layer) as tar:
            for member in tar:
                _apply_member(root, tar, member, dir_times)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib_error()) as e:
        raise ImageInvalid(f"layer {layer.name[:19]} is corrupt or truncated: {e}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ImageInvalid(f"layer {layer.name[:19]} cannot be applied: {e}") from None
    for path, mtime in reversed(dir_times):
        try:
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        except OSError:
            pass


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _apply_member(
    root: str, tar: tarfile.TarFile, member: tarfile.TarInfo, dir_times: list[tuple[str, float]]
) -> None:
    parts = _clean_parts(member.name)
    if not parts:
        if member.isdir():  # the root directory itself: take its mode and owner
            os.chmod(root, stat.S_IMODE(member.mode))
            os.lchown(root, member.uid, member.gid)
        return
    base = parts[-1]
    parent = _makedirs_in_root(root, parts[:-1])
    if base == _OPAQUE:
        for entry in os.listdir(parent):
            _remove(os.path.join(parent, entry))
        return
    if base.startswith(_WHITEOUT):
        hidden = base[len(_WHITEOUT) :]
        if hidden in ("", ".", ".."):
            # `.wh...` would remove the rootfs's parent (the import's staging dir).
            raise ImageInvalid(f"layer entry {member.name!r} is a whiteout of {hidden!r}")
        _remove(os.path.join(parent, hidden))
        return
    target = os.path.join(parent, base)
    if member.ischr() or member.isblk():
        return  # runc gives the sandbox its own /dev; device nodes in images are never needed
    existing: os.stat_result | None
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if member.isdir():
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            _remove(target)
            existing = None
        if existing is None:
            os.mkdir(target, 0o700)
        dir_times.append((target, float(member.mtime)))
    else:
        if existing is not None:
            _remove(target)
        if member.isreg():
            src = tar.extractfile(member)
            assert src is not None
            _write_file(target, src)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            link_parts = _clean_parts(member.linkname)
            if not link_parts:
                raise ImageInvalid(f"hard link {member.name!r} points at the root directory")
            source = os.path.join(resolve_in_root(root, link_parts[:-1]), link_parts[-1])
            try:
                st = os.lstat(source)
            except FileNotFoundError:
                raise ImageInvalid(
                    f"hard link {member.name!r} points at {member.linkname!r}, which the image "
                    "does not have"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise ImageInvalid(f"hard link {member.name!r} points at a directory")
            os.link(source, target, follow_symlinks=False)
            return  # a hard link shares the source's inode: owner and mode are the source's
        elif member.isfifo():
            os.mkfifo(target, 0o600)
        else:
            return  # sockets, GNU sparse extensions and the like: nothing a rootfs needs
    os.lchown(target, member.uid, member.gid)
    if not member.issym():
        os.chmod(target, stat.S_IMODE(member.mode))
        caps = member.pax_headers.get(f"SCHILY.xattr.{_CAPS_XATTR}")
        if caps is not None:
            try:
                os.setxattr(target, _CAPS_XATTR, caps.encode("latin-1"), follow_symlinks=False)
            except OSError:
                pass
        if not member.isdir():
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


def _write_file(target: str, src: IO[bytes]) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, src:
        shutil.copyfileobj(src, out, 1 << 20)


# -- into the store ------------------------------------------------------------------------------


def store_parsed(
    store: ImageStore,
    name: str,
    parsed: ParsedImage,
    stage: Path,
    *,
    labels: Mapping[str, str] | None = None,
) -> Image:
    """Flatten `parsed`'s layers into `stage/rootfs` and store it as `name`."""
    rootfs = stage / "rootfs-import"
    rootfs.mkdir(mode=0o755)
    for layer in parsed.layers:
        apply_layer(rootfs, layer)
    all_labels = {**parsed.labels, **(labels or {})}
    return store.add_rootfs(name, rootfs, parsed.config, move=True, labels=all_labels)


def import_archive(store: ImageStore, archive: Path, name: str | None = None) -> Image:
    """Store a `docker save` tarball or an OCI archive as `name` (default: its own tag).

    Raises:
        ImageInvalid: corrupt, truncated or unsafe archive (nothing is stored).
        ImageArchitectureError: built for another architecture.
        ValueError: no name given and the archive names no tag; or an invalid name.
    """
    with store.staging() as stage:
        work = stage / "archive"
        work.mkdir()
        parsed = parse_archive(archive, work)
        if name is None:
            name = _name_from_archive(work, parsed)
        return store_parsed(store, name, parsed, stage)


def _name_from_archive(work: Path, parsed: ParsedImage) -> str:
    if parsed.tags:
        return _normalize_ref(parsed.tags[0])
    index_path = work / "index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_bytes())
        for m in index.get("manifests") or []:
            ref = (m.get("annotations") or {}).get("io.containerd.image.name") or (
                m.get("annotations") or {}
            ).get("org.opencontainers.image.ref.name")
            if ref:
                return _normalize_ref(str(ref))
    raise ValueError("the archive names no image tag: give a name (`--name NAME`)")


def _normalize_ref(ref: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def default_name_for_ref(ref: str) -> str:
    """The store name a pulled reference gets: `registry/repo:tag` without docker.io, with
    `:latest` when no tag or digest is given."""
    name = _normalize_ref(ref.removeprefix("docker://"))
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


@contextmanager
def _env_without_proxy_creds() -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_AUTH")}
    yield env


def pull(
    store: ImageStore,
    ref: str,
    name: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    insecure: bool = False,
    timeout: float = 1800.0,
) -> Image:
    """Pull `ref` (e.g. `127.0.0.1:5000/busybox:1`, `python:3.12-slim`) with skopeo and store
    it as `name` (default: the reference). Nothing is stored unless the whole image arrived.

    Raises:
        RegistryError: the registry refused (its message), or skopeo failed to fetch.
        ImageInvalid / ImageArchitectureError: as for `import_archive`.
    """
    name = name or default_name_for_ref(ref)
    src = ref if ref.startswith("docker://") else f"docker://{ref}"
    with store.staging() as stage:
        layout = stage / "layout"
        cmd = ["skopeo", "copy", "--quiet", "--retry-times", "1"]
        if insecure:
            cmd.append("--src-tls-verify=false")
        if username is not None:
            cmd += ["--src-creds", f"{username}:{password or ''}"]
        else:
            cmd.append("--src-no-creds")
        cmd += [src, f"oci:{layout}:image"]
        with _env_without_proxy_creds() as env:
            env["HOME"] = str(stage)  # no stray auth.json from the server's own home
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            except FileNotFoundError:
                raise RegistryError(
                    "skopeo is not installed on the server (scripts/install installs it)"
                ) from None
            except subprocess.TimeoutExpired:
                raise RegistryError(f"pulling {ref} took longer than {timeout:.0f}s") from None
        if proc.returncode != 0:
            message = _skopeo_message(proc.stderr)
            if "no image found in manifest list for architecture" in message or (
                "choosing image instance" in message
            ):
                raise ImageArchitectureError(
                    f"{ref} has no variant for this host's architecture {host_architecture()}: "
                    f"{message}"
                )
            raise RegistryError(f"pulling {ref} failed: {message}")
        parsed = parse_oci_layout(layout, "image")
        return store_parsed(store, name, parsed, stage, labels={"hutch.source": ref})


def _skopeo_message(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else "skopeo failed without a message"
    # skopeo logs as `time="..." level=fatal msg="..."`
    if 'msg="' in text:
        text = text.split('msg="', 1)[1].rstrip('"')
    return text.replace('\\"', '"')
