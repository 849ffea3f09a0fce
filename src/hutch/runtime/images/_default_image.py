"""Building the default image from its recipe (`images/default/`) with debootstrap.

The build runs once per recipe: the recipe's digest is stored as a label on the image, and
`ensure_default_image` returns the stored image while the digest matches. Steps:

1. `debootstrap --variant=minbase` from the host's configured Debian mirror (its .debs cached);
2. in a chroot: the recipe's `files/`, `apt-get install` of `packages.txt`, then `setup.sh`;
3. apt lists and caches and host leftovers (resolv.conf, hostname) removed;
4. the rootfs moved into the image store (which shifts its ownership into the sandbox id range).

Run `python -m hutch.runtime.images._default_image` to build it with a progress bar.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hutch.runtime.images._store import Image, ImageConfig, ImageNotFound, ImageStore, _rmtree

DEFAULT_IMAGE_NAME = "default"
RECIPE_LABEL = "hutch.recipe-digest"
# Part of the recipe digest: bump it when a change to this builder changes what it produces.
_BUILDER_VERSION = "1"
_FALLBACK_MIRROR = "http://deb.debian.org/debian"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_TAIL_LINES = 30

Progress = Callable[[float, str], None]


class DefaultImageBuildError(RuntimeError):
    """Building the default image failed; the message holds the failing step's last output."""


def default_recipe_dir() -> Path:
    """The `images/default` recipe of the source tree this module was loaded from."""
    recipe = Path(__file__).resolve().parents[4] / "images" / "default"
    if not (recipe / "packages.txt").is_file():
        raise FileNotFoundError(
            f"the default image recipe is not at {recipe}: run from a Hutch source checkout, "
            "or pass the recipe directory explicitly"
        )
    return recipe


def recipe_digest(recipe_dir: Path) -> str:
    """A digest of every file in the recipe (names, contents, executable bits) and the builder."""
    h = hashlib.sha256(f"hutch-default-image-builder-{_BUILDER_VERSION}\n".encode())
    for path in sorted(p for p in recipe_dir.rglob("*") if not p.is_dir() or p.is_symlink()):
        rel = path.relative_to(recipe_dir).as_posix()
        if path.is_symlink():
            h.update(f"L {rel} {os.readlink(path)}\n".encode())
            continue
        executable = "x" if os.access(path, os.X_OK) else "-"
        h.update(f"F {rel} {executable} ".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
        h.update(b"\n")
    return h.hexdigest()


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


def ensure_default_image(
    store: ImageStore,
    recipe_dir: Path,
    *,
    cache_dir: Path,
    progress: Progress | None = None,
    force: bool = False,
) -> Image:
    """The stored `default` image, built first if missing or built from another recipe.

    Needs root, debootstrap and access to the host's Debian mirror. Concurrent calls (other
    processes too) wait for one build.

    Args:
        store: where the image is stored, as `default`.
        recipe_dir: the recipe, usually `default_recipe_dir()`.
        cache_dir: keeps downloaded packages (so a rebuild does not download again), the build
            tree and `build.log`.
        progress: called with (fraction 0..1, message) as the build goes.
        force: rebuild even if the stored image matches the recipe.

    Raises:
        DefaultImageBuildError: the build failed; the message has the output's last lines.
    """
    report = _MonotonicProgress(progress)
    digest = recipe_digest(recipe_dir)
    if not force and (image := _current(store, digest)) is not None:
        report(1.0, "default image is up to date")
        return image
    _check_host()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / "build.lock"):
        # Someone else may have built it while we waited for the lock.
        if not force and (image := _current(store, digest)) is not None:
            report(1.0, "default image is up to date")
            return image
        builder = _Builder(Recipe.load(recipe_dir), cache_dir, report)
        try:
            rootfs = builder.build()
            report(0.92, "storing the image")
            image = store.add_rootfs(
                DEFAULT_IMAGE_NAME,
                rootfs,
                builder.recipe.config,
                move=True,
                labels={RECIPE_LABEL: digest, "hutch.suite": builder.recipe.suite},
            )
        except OSError as e:
            raise DefaultImageBuildError(f"building the default image failed: {e}") from e
        finally:
            # A failed build's tree is of no use (its log is kept) and may be gigabytes.
            builder.cleanup()
    report(1.0, f"default image built: {image.size_bytes / 2**20:.0f} MiB")
    return image


def _current(store: ImageStore, digest: str) -> Image | None:
    try:
        image = store.get(DEFAULT_IMAGE_NAME)
    except ImageNotFound:
        return None
    return image if image.labels.get(RECIPE_LABEL) == digest else None


def _check_host() -> None:
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
def _exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- the host's Debian mirror -------------------------------------------------------------------


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


def _host_apt_acquire_settings() -> str:
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


# -- progress parsing (pure) --------------------------------------------------------------------

# debootstrap's --debian-installer progress phases -> the part of the debootstrap step they cover.
_DEBOOTSTRAP_PHASES: dict[str, tuple[float, float]] = {
    "DOWNREL": (0.0, 0.01),
    "DOWNRELSIG": (0.01, 0.02),
    "DOWNPKGS": (0.02, 0.03),
    "DOWNMAINPKGS": (0.02, 0.03),
    "SIZEDEBS": (0.03, 0.05),
    "DOWNDEBS": (0.05, 0.45),
    "EXTRACTPKGS": (0.45, 0.6),
    # The second stage counts all of these with one counter.
    "INSTCORE": (0.6, 1.0),
    "UNPACKREQ": (0.6, 1.0),
    "CONFREQ": (0.6, 1.0),
    "UNPACKBASE": (0.6, 1.0),
    "CONFBASE": (0.6, 1.0),
}


class DebootstrapStatusParser:
    """Parses `debootstrap --debian-installer`'s fd 3 (`P:`/`I:`/`E:` records).

    `feed(line)` returns (fraction of debootstrap done, message) when the line moves the progress
    or the message; `errors` collects `E:` messages.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.message = "debootstrap"
        self._phase = ""
        self._now = self._end = 0
        self._kind = ""
        self._args: list[str] = []

    def fraction(self) -> float:
        lo, hi = _DEBOOTSTRAP_PHASES.get(self._phase, (0.0, 0.0))
        done = min(self._now / self._end, 1.0) if self._end > 0 else 0.0
        return lo + (hi - lo) * done

    def feed(self, line: str) -> tuple[float, str] | None:
        tag, _, rest = line.partition(": ")
        if tag == "P":
            words = rest.split()
            if len(words) < 2 or not (words[0].isdigit() and words[1].isdigit()):
                return None
            self._now, self._end = int(words[0]), int(words[1])
            if len(words) > 2:
                self._phase = words[2]
            return self.fraction(), self.message
        if tag in ("I", "W", "E"):
            self._kind, self._args = tag, []
        elif tag in ("PA", "IA", "WA", "EA"):
            self._args.append(rest)
        elif tag in ("IF", "WF", "EF") and self._kind == tag[0]:
            text = _printf(rest, self._args)
            if tag == "EF":
                self.errors.append(text)
            elif tag == "IF":
                self.message = text
                return self.fraction(), self.message
        elif tag == "PF":
            self._args = []
        return None


def _printf(fmt: str, args: Sequence[str]) -> str:
    try:
        return fmt.replace("\\n", " ") % tuple(args)
    except (TypeError, ValueError):
        return " ".join([fmt, *args])


def parse_apt_status(line: str) -> tuple[str, float, str] | None:
    """One `APT::Status-Fd` line -> (kind: "download"|"install"|"error", percent, message)."""
    parts = line.rstrip("\n").split(":", 3)
    if len(parts) != 4:
        return None
    kind, _, percent, message = parts
    try:
        value = float(percent)
    except ValueError:
        return None
    if kind == "dlstatus":
        return "download", value, message
    if kind == "pmstatus":
        return "install", value, message
    if kind == "pmerror":
        return "error", value, message
    return None


# -- rendering ----------------------------------------------------------------------------------


def render_progress_bar(stream: IO[str]) -> Progress:
    """A progress callback that draws a one-line bar on a terminal, or plain lines every 5%."""
    tty = stream.isatty()
    last_bucket = -1

    def draw(fraction: float, message: str) -> None:
        nonlocal last_bucket
        fraction = min(max(fraction, 0.0), 1.0)
        if tty:
            width = shutil.get_terminal_size((80, 24)).columns
            bar = "#" * int(fraction * 30)
            line = f"[{bar:<30}] {fraction * 100:3.0f}% {message}"
            stream.write("\r" + line[: width - 1].ljust(width - 1))
            if fraction >= 1.0:
                stream.write("\n")
        else:
            bucket = int(fraction * 20)
            if bucket == last_bucket:
                return
            last_bucket = bucket
            stream.write(f"{fraction * 100:3.0f}% {message}\n")
        stream.flush()

    return draw


class _MonotonicProgress:
    """Forwards progress, never backwards (phases overlap a little), and never raising."""

    def __init__(self, sink: Progress | None) -> None:
        self._sink = sink
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self._last = max(self._last, min(fraction, 1.0))
        if self._sink is not None:
            self._sink(self._last, message)

    def span(self, lo: float, hi: float) -> Progress:
        return lambda fraction, message: self(lo + (hi - lo) * fraction, message)


# -- the build ----------------------------------------------------------------------------------

# Runs one command chrooted into the rootfs with proc, sys and dev mounted, inside a private
# mount and pid namespace (`unshare`): the mounts cannot leak to the host and disappear with the
# namespace however the command ends (even if the builder is SIGKILLed), and any daemon it starts
# dies with it. /dev is a tmpfs with the few nodes a package install needs, never the host's.
_CHROOT_SCRIPT = r"""
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

_PRIVATE_NAMESPACES = ("unshare", "--mount", "--pid", "--fork", "--propagation", "private")

_CHROOT_ENV = {
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


class _Builder:
    log: IO[str]

    def __init__(self, recipe: Recipe, cache_dir: Path, report: _MonotonicProgress) -> None:
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
            self._apt(["update"], self.report.span(0.3, 0.34), "updating package lists")
            self._apt(
                ["install", "-y", "--no-install-recommends", *self.recipe.packages],
                self.report.span(0.34, 0.88),
                "installing packages",
            )
            if self.recipe.setup_script is not None:
                self.report(0.88, "running setup.sh")
                shutil.copy(self.recipe.setup_script, self.rootfs / "hutch-setup.sh")
                self._in_chroot(["/bin/sh", "-eu", "/hutch-setup.sh"], step="setup.sh")
                (self.rootfs / "hutch-setup.sh").unlink()
            self.report(0.9, "cleaning up")
            self._finish_rootfs()
        return self.rootfs

    def cleanup(self) -> None:
        # _rmtree refuses if anything is mounted below; every build mount lives in a private
        # mount namespace (_PRIVATE_NAMESPACES), so that would be a bug, not a state to handle.
        _rmtree(self.work)

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
            *_PRIVATE_NAMESPACES,
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

        self._run(
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
        if acquire := _host_apt_acquire_settings():
            (etc / "apt/apt.conf.d/99hutch-mirror").write_text(
                "// The host's settings for the mirror this image uses (set at build time).\n"
                + acquire
            )
        # Name resolution as the host does it, for the build only (_finish_rootfs resets both).
        for name in ("resolv.conf", "hosts"):
            if Path("/etc", name).is_file():
                shutil.copy(Path("/etc", name), etc / name)
        if self.recipe.files_dir is not None:
            _copy_files_over(self.recipe.files_dir, self.rootfs)

    def _apt(self, args: list[str], report: Progress, message: str) -> None:
        report(0.0, message)

        def on_status(line: str) -> None:
            status = parse_apt_status(line)
            if status is None or status[0] == "error":
                return
            kind, percent, text = status
            # Downloads are fast from a near mirror; unpacking and configuring are the slow part.
            lo, hi = (0.0, 0.4) if kind == "download" else (0.4, 1.0)
            report(lo + (hi - lo) * percent / 100, text)

        self._in_chroot(
            ["apt-get", *_APT_OPTIONS, *args], step=f"apt-get {args[0]}", on_status=on_status
        )

    def _in_chroot(
        self, argv: list[str], *, step: str, on_status: Callable[[str], None] | None = None
    ) -> None:
        wrapper = [
            *_PRIVATE_NAMESPACES,
            "sh",
            "-c",
            _CHROOT_SCRIPT,
            "sh",
            str(self.rootfs),
            str(self.archives),
        ]
        self._run(wrapper + argv, step=step, on_status=on_status, env=_CHROOT_ENV)

    def _run(
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

    def _finish_rootfs(self) -> None:
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


def _copy_files_over(src: Path, dest_root: Path) -> None:
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


# -- CLI ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hutch.runtime.images._default_image",
        description="Build the default image (once per recipe) into Hutch's image store.",
    )
    home = Path(os.environ.get("HUTCH_HOME", "/var/lib/hutch"))
    parser.add_argument("--home", type=Path, default=home, help="Hutch's state dir (HUTCH_HOME)")
    parser.add_argument("--recipe", type=Path, default=None, help="recipe dir (images/default)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        recipe = args.recipe or default_recipe_dir()
        image = ensure_default_image(
            ImageStore(args.home / "images"),
            recipe,
            cache_dir=args.home / "cache",
            progress=render_progress_bar(sys.stderr),
            force=args.force,
        )
    except (DefaultImageBuildError, FileNotFoundError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was stored", file=sys.stderr)
        return 130
    print(
        f"{image.name} {image.id[:12]} {image.size_bytes / 2**20:.0f} MiB "
        f"({time.monotonic() - started:.0f} s) {image.rootfs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
