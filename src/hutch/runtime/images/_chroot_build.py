"""Building a root filesystem in a chroot: debootstrap, apt-get and a recipe's setup script.

`ChrootBuilder` runs each step in private mount and pid namespaces, logs its output and reports
progress; the default image (`_default_image.py`) and recipe images (`_recipe_image.py`) drive it.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import selectors
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hutch.runtime.images._apt_sources import (
    host_apt_acquire_settings,
    host_apt_sources,
    image_apt_sources,
)
from hutch.runtime.images._build_progress import (
    DebootstrapStatusParser,
    MonotonicProgress,
    Progress,
    parse_apt_status,
)
from hutch.runtime.images._store import ImageConfig, remove_tree

_TAIL_LINES = 30


class DefaultImageBuildError(RuntimeError):
    """Building the default image failed; the message holds the failing step's last output."""


@dataclass(frozen=True)
class Recipe:
    suite: str
    packages: tuple[str, ...]
    config: ImageConfig
    setup_script: Path | None
    files_dir: Path | None

    @classmethod
    def load(cls, recipe_dir: Path) -> Recipe:
        settings = json.loads((recipe_dir / "config.json").read_text())
        packages = []
        for line in (recipe_dir / "packages.txt").read_text().splitlines():
            packages += line.split("#", 1)[0].split()
        setup, files = recipe_dir / "setup.sh", recipe_dir / "files"
        return cls(
            suite=str(settings.get("suite", "bookworm")),
            packages=tuple(packages),
            config=ImageConfig.from_dict(settings.get("image", {})),
            setup_script=setup if setup.is_file() else None,
            files_dir=files if files.is_dir() else None,
        )


def check_host() -> None:
    if os.geteuid() != 0:
        raise DefaultImageBuildError(
            "building the default image needs root (debootstrap, chroot, mounts): "
            "run `sudo hutch image build`"
        )
    missing = [t for t in ("debootstrap", "unshare", "chroot", "bash") if shutil.which(t) is None]
    if missing:
        raise DefaultImageBuildError(
            f"building the default image needs {', '.join(missing)}: "
            "`apt-get install debootstrap util-linux coreutils`"
        )


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# Runs one command chrooted into the rootfs with proc, sys and dev mounted, inside a private
# mount and pid namespace (`unshare`): the mounts cannot leak to the host and disappear with the
# namespace however the command ends (even if the builder is SIGKILLed), and any daemon it starts
# dies with it. /dev is a tmpfs with the few nodes a package install needs, never the host's.
CHROOT_SCRIPT = r"""
set -eu
root=$1 archives=$2; shift 2
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=755,size=16m,nosuid devtmp "$root/dev"
node() { mknod -m 666 "$root/dev/$1" c "$2" "$3"; }
node null 1 3; node zero 1 5; node full 1 7; node random 1 8; node urandom 1 9; node tty 5 0
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mkdir -p "$root/var/cache/apt/archives"
mount --bind "$archives" "$root/var/cache/apt/archives"
exec chroot "$root" "$@"
"""

PRIVATE_NAMESPACES = ("unshare", "--mount", "--pid", "--fork", "--propagation", "private")

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}

_APT_OPTIONS = (
    "-q",
    "-o",
    "Dpkg::Use-Pty=0",
    "-o",
    "APT::Color=0",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "APT::Status-Fd={status_fd}",
)


class ChrootBuilder:
    log: IO[str]

    def __init__(self, recipe: Recipe, cache_dir: Path, report: MonotonicProgress) -> None:
        self.recipe = recipe
        self.cache_dir = cache_dir
        self.report = report
        self.work = cache_dir / "build"
        self.rootfs = self.work / "rootfs"
        self.debs = cache_dir / "debootstrap"
        self.archives = cache_dir / "apt-archives"
        self.log_path = cache_dir / "build.log"

    def build(self) -> Path:
        self.cleanup()  # what a crashed build left
        for d in (self.work, self.debs, self.archives / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as self.log:
            mirror, sources = image_apt_sources(host_apt_sources(), self.recipe.suite)
            self._debootstrap(mirror, self.report.span(0.0, 0.3))
            self._prepare_chroot(sources)
            self.apt(["update"], self.report.span(0.3, 0.34), "updating package lists")
            self.apt(
                ["install", "-y", "--no-install-recommends", *self.recipe.packages],
                self.report.span(0.34, 0.88),
                "installing packages",
            )
            if self.recipe.setup_script is not None:
                self.report(0.88, "running setup.sh")
                shutil.copy(self.recipe.setup_script, self.rootfs / "hutch-setup.sh")
                self.in_chroot(["/bin/sh", "-eu", "/hutch-setup.sh"], step="setup.sh")
                (self.rootfs / "hutch-setup.sh").unlink()
            self.report(0.9, "cleaning up")
            self.finish_rootfs()
        return self.rootfs

    def cleanup(self) -> None:
        # remove_tree refuses if anything is mounted below; every build mount lives in a private
        # mount namespace (PRIVATE_NAMESPACES), so that would be a bug, not a state to handle.
        remove_tree(self.work)

    def _debootstrap(self, mirror: str, report: Progress) -> None:
        parser = DebootstrapStatusParser()
        report(0.0, f"debootstrap {self.recipe.suite} from {mirror}")

        def on_status(line: str) -> None:
            if (update := parser.feed(line)) is not None:
                report(*update)

        # --debian-installer makes debootstrap write machine-readable progress to fd 3.
        # NB: bash, not sh: dash only redirects fds 0-9, and the pipe's number may be higher.
        # debootstrap mounts proc and sys in the target itself and unmounts them only if it
        # exits normally: a private mount namespace makes them vanish however it ends.
        argv = [
            *PRIVATE_NAMESPACES,
            "bash",
            "-c",
            'exec "$@" 3>&{status_fd}',
            "bash",
            "debootstrap",
            "--debian-installer",
            "--variant=minbase",
            "--components=main",
            f"--cache-dir={self.debs}",
            self.recipe.suite,
            str(self.rootfs),
            mirror,
        ]

        def on_output(line: str) -> None:
            # Errors found before debootstrap sets up fd 3 come as the same records on output.
            if line.startswith("E"):
                parser.feed(line)

        self.run(
            argv,
            step="debootstrap",
            on_status=on_status,
            on_output=on_output,
            extra_error=parser.errors,
        )
        report(1.0, "base system installed")

    def _prepare_chroot(self, sources: str) -> None:
        etc = self.rootfs / "etc"
        # Services must not start inside the build chroot (nor later in a sandbox: no init there).
        policy = self.rootfs / "usr/sbin/policy-rc.d"
        policy.write_text(
            "#!/bin/sh\n# Installed by Hutch: sandboxes start no services.\nexit 101\n"
        )
        policy.chmod(0o755)
        (etc / "apt/sources.list").unlink(missing_ok=True)
        (etc / "apt/sources.list.d/debian.sources").write_text(sources)
        if acquire := host_apt_acquire_settings():
            (etc / "apt/apt.conf.d/99hutch-mirror").write_text(
                "// The host's settings for the mirror this image uses (set at build time).\n"
                + acquire
            )
        # Name resolution as the host does it, for the build only (finish_rootfs resets both).
        for name in ("resolv.conf", "hosts"):
            if Path("/etc", name).is_file():
                shutil.copy(Path("/etc", name), etc / name)
        if self.recipe.files_dir is not None:
            copy_files_over(self.recipe.files_dir, self.rootfs)

    def apt(self, args: list[str], report: Progress, message: str) -> None:
        report(0.0, message)

        def on_status(line: str) -> None:
            status = parse_apt_status(line)
            if status is None or status[0] == "error":
                return
            kind, percent, text = status
            # Downloads are fast from a near mirror; unpacking and configuring are the slow part.
            lo, hi = (0.0, 0.4) if kind == "download" else (0.4, 1.0)
            report(lo + (hi - lo) * percent / 100, text)

        self.in_chroot(
            ["apt-get", *_APT_OPTIONS, *args], step=f"apt-get {args[0]}", on_status=on_status
        )

    def in_chroot(
        self,
        argv: list[str],
        *,
        step: str,
        on_status: Callable[[str], None] | None = None,
        on_output: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Runs argv chrooted into the rootfs (CHROOT_SCRIPT), with CHROOT_ENV unless `env`."""
        wrapper = [
            *PRIVATE_NAMESPACES,
            "sh",
            "-c",
            CHROOT_SCRIPT,
            "sh",
            str(self.rootfs),
            str(self.archives),
        ]
        self.run(
            wrapper + argv,
            step=step,
            on_status=on_status,
            on_output=on_output,
            env=CHROOT_ENV if env is None else env,
        )

    def run(
        self,
        argv: list[str],
        *,
        step: str,
        on_status: Callable[[str], None] | None = None,
        on_output: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
        extra_error: Iterable[str] = (),
    ) -> None:
        """Runs argv, logging its output; `{status_fd}` in argv is a pipe fed to `on_status`."""
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        status_r, status_w = os.pipe()
        argv = [a.replace("{status_fd}", str(status_w)) for a in argv]
        self.log.write(f"\n$ {' '.join(argv)}\n")
        self.log.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w,),
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            os.close(status_r)
            os.close(status_w)
            raise DefaultImageBuildError(f"{step}: cannot run {argv[0]}: {e}") from e
        os.close(status_w)
        assert proc.stdout is not None
        try:
            for source, line in _lines(proc.stdout.fileno(), status_r):
                if source == "status":
                    if on_status is not None:
                        on_status(line)
                else:
                    self.log.write(line + "\n")
                    tail.append(line)
                    if on_output is not None:
                        on_output(line)
        except BaseException:
            # Interrupted (Ctrl-C, an error in a callback): stop the step's whole process tree,
            # which runs in its own session so that the terminal's SIGINT does not half-kill it.
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            os.close(status_r)
            proc.stdout.close()
            returncode = proc.wait()
            self.log.flush()
        if returncode != 0:
            errors = [f"E: {e}" for e in extra_error]
            output = "\n".join(["    " + line for line in [*tail, *errors]])
            raise DefaultImageBuildError(
                f"building the default image failed: {step} exited with status {returncode}.\n"
                f"Last output:\n{output}\nFull log: {self.log_path}"
            )

    def finish_rootfs(self) -> None:
        root = self.rootfs
        for pattern in (
            "var/lib/apt/lists/*",
            "var/cache/apt/*.bin",
            "var/cache/apt/archives/*.deb",
            "var/cache/debconf/*-old",
            "var/lib/dpkg/*-old",
            "tmp/*",
            "var/tmp/*",
            "root/.cache",
            "root/.npm",
        ):
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        # Logs of the build are not the sandbox's; keep the dirs, packages expect them.
        for path in (root / "var/log").rglob("*"):
            if not path.is_dir() or path.is_symlink():
                path.unlink()
        (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        # The host's name and resolver are not the image's: the runtime provides both per sandbox.
        (root / "etc/hostname").write_text("sandbox\n")
        (root / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        )
        (root / "etc/resolv.conf").write_text("")


def copy_files_over(src: Path, dest_root: Path) -> None:
    """Copies a tree over the rootfs: new files owned by root, existing dirs left as they are."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for d in dirnames:
            target = dest_root / rel / d
            if not target.exists():
                target.mkdir(mode=0o755)
        for f in filenames:
            target = dest_root / rel / f
            target.unlink(missing_ok=True)
            shutil.copy2(Path(dirpath, f), target, follow_symlinks=False)
            if not target.is_symlink():
                os.chown(target, 0, 0)


def _lines(stdout_fd: int, status_fd: int) -> Iterator[tuple[str, str]]:
    """Lines from a command's output and its status pipe, as they come, until both close."""
    sel = selectors.DefaultSelector()
    buffers = {stdout_fd: b"", status_fd: b""}
    names = {stdout_fd: "output", status_fd: "status"}
    for fd in buffers:
        sel.register(fd, selectors.EVENT_READ)
    try:
        while buffers:
            for key, _ in sel.select():
                fd = key.fd
                assert isinstance(fd, int)
                chunk = os.read(fd, 65536)
                data = buffers[fd] + chunk
                *complete, rest = data.replace(b"\r", b"\n").split(b"\n")
                for raw in complete:
                    yield names[fd], raw.decode(errors="replace")
                if chunk:
                    buffers[fd] = rest
                else:
                    if rest:
                        yield names[fd], rest.decode(errors="replace")
                    sel.unregister(fd)
                    del buffers[fd]
    finally:
        sel.close()
