"""The image store: content-addressed, flattened, read-only root filesystems with their config.

Layout under the store root (all writes are rename-into-place, so a crash leaves either the old
state or the new one, never half of either):

    images/<id>/rootfs/       the flattened rootfs, ownership shifted into the sandbox id range
    images/<id>/image.json    config, labels, size, creation time
    refs.json                 name -> id
    tmp/<nonce>/, <nonce>.lock  staging and trash; a dir whose lock nobody holds is garbage
    lock                      held while committing (rename + refs update) or sweeping
    files.clean               present while files/ holds nothing that no image links to

Content is never deleted behind a running sandbox's back: re-pointing a name leaves the old
content in place (still reachable by id) until `remove` or `prune` is called for it.
"""

from __future__ import annotations

import builtins
import ctypes
import ctypes.util
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hutch.runtime._idmap import HOST_ID_BASE, shift_ownership

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}")
_ID_RE = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")
_ID_VERSION = b"hutch-image-v1\n"


class ImageNotFound(LookupError):
    """No image has this name or id."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"image {name!r} not found: `hutch image ls` lists the stored images; "
            "`hutch image build` builds the default image, and `hutch image pull` or "
            "`hutch image import` add others"
        )


@dataclass(frozen=True)
class ImageConfig:
    """How a sandbox runs by default in an image (the OCI image config's subset Hutch uses)."""

    env: tuple[str, ...]
    working_dir: str
    user: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": list(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageConfig:
        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"image config: {key!r} must be a list of strings")
            return tuple(value)

        working_dir, user = data.get("working_dir", "/"), data.get("user", "root")
        if not isinstance(working_dir, str) or not working_dir.startswith("/"):
            raise ValueError("image config: 'working_dir' must be an absolute path")
        if not isinstance(user, str) or not user:
            raise ValueError("image config: 'user' must be a non-empty string")
        env = strings("env")
        if bad := [e for e in env if "=" not in e]:
            raise ValueError(f"image config: env entries must be KEY=VALUE, got {bad[0]!r}")
        return cls(env, working_dir, user, strings("entrypoint"), strings("cmd"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ImageConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("image config: expected a JSON object")
        return cls.from_dict(data)


@dataclass(frozen=True)
class Image:
    """A stored image. `rootfs` is read-only: use it as an overlay lower dir, never write to it."""

    id: str
    name: str
    rootfs: Path
    config: ImageConfig
    size_bytes: int
    created_at: str
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


class ImageStore:
    """Images on disk under `root` (e.g. `/var/lib/hutch/images`). Safe across processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._images = root / "images"
        self._tmp = root / "tmp"
        self._refs = root / "refs.json"
        # Regular files shared between images: one inode, hard-linked into every rootfs.
        self._files = root / "files"
        # NB: a pass over files/ stats every shared file (158k with a dozen images: 7-9 s on a
        # loaded host, and a server start opens the store twice); this marker says none is due.
        self._clean = root / "files.clean"
        # Images read, by (id, name), with their image.json's (mtime, size) then: every create
        # reads its image (a node's by id, for each create a replica sends it), and the parse
        # was ~0.3 ms of it on a loaded host; a stat says whether the file is still that one.
        self._loaded: dict[tuple[str, str], tuple[tuple[int, int], Image]] = {}
        # NB: 0o711, not 0o700: runc resolves the rootfs path as the sandbox's mapped root.
        for d in (root, self._images, self._tmp, self._files):
            d.mkdir(mode=0o711, parents=True, exist_ok=True)
        self._sweep()

    def get(self, name: str) -> Image:
        """The image called `name`, or with id (or unique id prefix of 12+ hex digits) `name`.

        Raises:
            ImageNotFound: no such name or id.
        """
        refs = self._read_refs()
        if name in refs:
            return self._load(refs[name], name)
        image_id = self._resolve_id(name)
        if image_id is None:
            raise ImageNotFound(name)
        names = sorted(n for n, i in refs.items() if i == image_id)
        return self._load(image_id, names[0] if names else image_id)

    def list(self) -> list[Image]:
        """Every named image, sorted by name (one entry per name)."""
        images = []
        for name, image_id in sorted(self._read_refs().items()):
            try:
                images.append(self._load(image_id, name))
            except ImageNotFound:
                continue
        return images

    def add_rootfs(
        self,
        name: str,
        source: Path,
        config: ImageConfig,
        *,
        move: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> Image:
        """Store the directory `source` as a flattened rootfs and point `name` at it.

        `source` holds ownership as seen inside the sandbox (root is 0); the stored copy is
        shifted into the sandbox id range. With `move=True` the source is consumed (renamed when
        on the same filesystem), even if storing fails.

        Raises:
            ValueError: `name` is not a valid image name.
            NotADirectoryError: `source` is not a directory.
        """
        check_image_name(name)
        source = source.resolve()
        if not source.is_dir():
            raise NotADirectoryError(f"image source {str(source)!r} is not a directory")
        labels = dict(labels or {})
        with self._staging() as stage:
            rootfs = stage / "rootfs"
            _move_or_copy(source, rootfs, move=move)
            shift_ownership(rootfs, HOST_ID_BASE)
            with self._locked():
                _share_files(rootfs, self._files)
            tree_digest, size = _tree_digest(rootfs)
            image_id = _image_id(tree_digest, config, labels)
            meta = {
                "config": config.to_dict(),
                "labels": labels,
                "size_bytes": size,
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            _write_durably(stage / "image.json", json.dumps(meta, indent=2, sort_keys=True))
            os.chmod(stage, 0o711)
            _syncfs(stage)
            with self._locked():
                target = self._images / image_id
                if not target.exists():
                    os.rename(stage, target)
                    _fsync_dir(self._images)
                refs = self._read_refs()
                refs[name] = image_id
                self._write_refs(refs)
        return self._load(image_id, name)

    def tag(self, source: str, name: str) -> Image:
        """Point the name `name` at the image `source` (a name or id) too.

        Raises:
            ImageNotFound: no image `source`.
            ValueError: `name` is not a valid image name.
        """
        check_image_name(name)
        with self._locked():
            image = self.get(source)
            refs = self._read_refs()
            refs[name] = image.id
            self._write_refs(refs)
        return self._load(image.id, name)

    def resolve(self, name: str) -> str:
        """The id of the image with name or id `name`.

        Raises:
            ImageNotFound: no such name or id.
        """
        return self.get(name).id

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private scratch dir on the store's filesystem (for unpacking what `add_rootfs`
        then takes with `move=True`); removed on exit, and by a sweep if its owner died."""
        with self._staging() as stage:
            yield stage

    def remove(self, name: str) -> None:
        """Remove the name `name`; the content goes too once no name points at it.

        Given an id, removes the content and every name pointing at it. The caller makes sure no
        sandbox still uses the content (it is their overlay lower dir).

        Raises:
            ImageNotFound: no such name or id.
        """
        with self._locked():
            refs = self._read_refs()
            if name in refs:
                image_id = refs.pop(name)
            else:
                resolved = self._resolve_id(name)
                if resolved is None:
                    raise ImageNotFound(name)
                image_id = resolved
                refs = {n: i for n, i in refs.items() if i != image_id}
            self._write_refs(refs)
            if image_id not in refs.values():
                self._trash(image_id)
        self._sweep()

    def prune(self, in_use: Collection[str] = ()) -> builtins.list[str]:
        """Delete content no name points at, except the ids in `in_use`; returns the deleted ids."""
        with self._locked():
            keep = set(self._read_refs().values()) | set(in_use)
            dangling = [p.name for p in self._images.iterdir() if p.name not in keep]
            for image_id in dangling:
                self._trash(image_id)
        self._sweep()
        return dangling

    # -- internals ---------------------------------------------------------------------------

    def _load(self, image_id: str, name: str) -> Image:
        d = self._images / image_id
        try:
            st = (d / "image.json").stat()
            seen = (st.st_mtime_ns, st.st_size)
            loaded = self._loaded.get((image_id, name))
            if loaded is not None and loaded[0] == seen:
                return replace(loaded[1], labels=dict(loaded[1].labels))
            meta = json.loads((d / "image.json").read_text())
        except FileNotFoundError:
            raise ImageNotFound(name) from None
        image = Image(
            id=image_id,
            name=name,
            rootfs=d / "rootfs",
            config=ImageConfig.from_dict(meta["config"]),
            size_bytes=int(meta["size_bytes"]),
            created_at=str(meta["created_at"]),
            labels=dict(meta.get("labels", {})),
        )
        if len(self._loaded) >= 256:
            self._loaded.clear()  # a bound (names come from requests)
        self._loaded[(image_id, name)] = (seen, replace(image, labels=dict(image.labels)))
        return image

    def _resolve_id(self, ref: str) -> str | None:
        m = _ID_RE.fullmatch(ref)
        if m is None:
            return None
        if len(m.group(1)) == 64:  # a whole id (a node's creates): no listing of every image
            return m.group(1) if (self._images / m.group(1)).is_dir() else None
        matches = [p.name for p in self._images.iterdir() if p.name.startswith(m.group(1))]
        return matches[0] if len(matches) == 1 else None

    def _read_refs(self) -> dict[str, str]:
        try:
            data = json.loads(self._refs.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _write_refs(self, refs: Mapping[str, str]) -> None:
        _write_durably(self._refs, json.dumps(dict(sorted(refs.items())), indent=2) + "\n")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh dir under tmp/, marked live by a held lock; removed unless renamed away."""
        nonce = uuid.uuid4().hex
        lock_path = self._tmp / f"{nonce}.lock"
        stage = self._tmp / nonce
        # Under the store lock, so that a sweep never sees the lock file before it is held.
        with self._locked():
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            stage.mkdir(mode=0o700)
        try:
            try:
                yield stage
            finally:
                left = stage.exists()  # not committed: files it shared may be unlinked now
                remove_tree(stage)
                if left:
                    # NB: after the removal, not before: a sweep in between would see the
                    # stage's links, find nothing to drop, and mark the store clean.
                    with self._locked():
                        self._clean.unlink(missing_ok=True)
        finally:
            lock_path.unlink(missing_ok=True)
            os.close(fd)

    def _trash(self, image_id: str) -> None:
        # Rename first (atomic), delete later: an interrupted delete is then only garbage in tmp/.
        src = self._images / image_id
        if src.exists():
            self._clean.unlink(missing_ok=True)  # its files may be linked from files/ alone
            os.rename(src, self._tmp / f"trash-{uuid.uuid4().hex}")
            _fsync_dir(self._images)

    def _sweep(self) -> None:
        """Delete what dead adders and interrupted removals left in tmp/, and shared files no
        image links to any more."""
        with self._locked():
            removed = False
            for entry in self._tmp.iterdir():
                if entry.suffix == ".lock":
                    continue
                lock_path = self._tmp / f"{entry.name}.lock"
                fd = _try_lock(lock_path)
                if fd is None:
                    continue  # a live adder owns it
                try:
                    remove_tree(entry)
                    removed = True
                    lock_path.unlink(missing_ok=True)
                finally:
                    if fd >= 0:
                        os.close(fd)
            for lock_path in self._tmp.glob("*.lock"):
                if not lock_path.with_suffix("").exists():
                    fd = _try_lock(lock_path)
                    if fd is not None:
                        lock_path.unlink(missing_ok=True)
                        os.close(fd)
            # A dead adder's stage or a removal's trash just went: its files may be unlinked.
            if removed or not self._clean.exists():
                _drop_unshared(self._files)
                self._clean.touch()


def _try_lock(lock_path: Path) -> int | None:
    """An fd holding `lock_path`'s lock; -1 if there is no lock file; None if someone holds it."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def check_image_name(name: str) -> None:
    """Raises ValueError, saying what a name may hold, unless `name` can name an image."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid image name {name!r}: use letters, digits and . _ : / @ + - "
            "(starting with a letter or digit, at most 255 characters)"
        )


def _move_or_copy(source: Path, dest: Path, *, move: bool) -> None:
    if move:
        try:
            os.rename(source, dest)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
    # cp -a keeps what shutil.copytree loses: ownership, hard links, device nodes, xattrs.
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", str(source), str(dest)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise OSError(f"copying {source} into the image store failed: {proc.stderr.strip()}")
    if move:
        remove_tree(source)


def _tree_digest(root: Path) -> tuple[str, int]:
    """A digest of everything a sandbox can observe in the tree (not mtimes), and its disk usage."""
    h = hashlib.sha256()
    file_digests: dict[tuple[int, int], str] = {}
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names = [dirpath] if dirpath == str(root) else []
        names += [os.path.join(dirpath, n) for n in sorted(filenames + dirnames)]
        for path in names:
            st = os.lstat(path)
            key = (st.st_dev, st.st_ino)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                payload = file_digests.get(key)
                if payload is None:
                    payload = file_digests[key] = _file_digest(path)
                    size += st.st_blocks * 512
            elif stat.S_ISLNK(mode):
                payload = os.readlink(path)
                size += st.st_blocks * 512
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                payload = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            else:
                payload = ""
                size += st.st_blocks * 512
            rel = os.path.relpath(path, root)
            h.update(os.fsencode(f"{rel}\0{mode:o}\0{st.st_uid}\0{st.st_gid}\0{payload}\0"))
            for attr in sorted(os.listxattr(path, follow_symlinks=False)):
                value = os.getxattr(path, attr, follow_symlinks=False)
                h.update(os.fsencode(f"{attr}={value.hex()}\0"))
            h.update(b"\n")
    return h.hexdigest(), size


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _image_id(tree_digest: str, config: ImageConfig, labels: Mapping[str, str]) -> str:
    h = hashlib.sha256(_ID_VERSION)
    h.update(tree_digest.encode())
    h.update(config.to_json().encode())
    h.update(json.dumps(dict(labels), sort_keys=True).encode())
    return h.hexdigest()


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding `path`: the rootfs's data must be on disk before its rename."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Deletes a file or a tree, read-only dirs included, and refuses (EBUSY) if anything is
    mounted below it: never cross into a build's proc, say."""
    if _has_mounts_below(path):
        raise OSError(errno.EBUSY, "refusing to delete a tree with mounts below it", str(path))
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        _make_writable_dirs(path)
        shutil.rmtree(path)


def _make_writable_dirs(path: Path) -> None:
    # Images hold read-only dirs (e.g. 0o555 /proc); root ignores that, but keep non-root callers
    # (unit tests) able to clean up after themselves.
    if os.geteuid() == 0:
        return
    for dirpath, _, _ in os.walk(path):
        st = os.lstat(dirpath)
        if not st.st_mode & stat.S_IWUSR:
            os.chmod(dirpath, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def _has_mounts_below(path: Path) -> bool:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4]
            for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n")):
                mount_point = mount_point.replace(escaped, char)
            mount_point = mount_point.replace("\\134", "\\")
            if mount_point.startswith(prefix) or mount_point == prefix[:-1]:
                return True
    return False


def _share_key(path: str, st: os.stat_result) -> str:
    h = hashlib.sha256(_file_digest(path).encode())
    h.update(f"{st.st_mode:o}:{st.st_uid}:{st.st_gid}:{st.st_mtime_ns}".encode())
    for attr in sorted(os.listxattr(path, follow_symlinks=False)):
        h.update(f"{attr}={os.getxattr(path, attr, follow_symlinks=False).hex()}".encode())
    return h.hexdigest()


def _share_files(rootfs: Path, files: Path) -> None:
    """Replace every regular file of `rootfs` that some stored image already has (same content,
    mode, owner, mtime, xattrs) by a hard link to that one inode, and offer the others for
    sharing: layers two images have in common take disk once. Overlay lower dirs are never
    written (writes copy up), so sharing an inode between images is safe."""
    for dirpath, _, filenames in os.walk(rootfs):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                continue
            shared = files / _share_key(path, st)
            try:
                os.link(path, shared)  # the first of its kind: offer it
                continue
            except FileExistsError:
                pass
            if os.path.samestat(st, os.lstat(shared)):
                continue
            tmp = f"{path}.hutch-share"
            os.link(shared, tmp)
            os.rename(tmp, path)


def _drop_unshared(files: Path) -> None:
    """Delete shared files that no image links to (link count 1: only files/ has them)."""
    if not files.is_dir():
        return
    for entry in os.scandir(files):
        try:
            if entry.stat(follow_symlinks=False).st_nlink <= 1:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass
