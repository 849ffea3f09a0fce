"""The image store, the id shift, the default image recipe and its build plumbing."""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hutch.runtime._idmap import HOST_ID_BASE, shift_ownership
from hutch.runtime.images import _store as _images
from hutch.runtime.images._apt_sources import (
    image_apt_sources,
    parse_deb822_sources,
    parse_sources_list,
)
from hutch.runtime.images._build_progress import DebootstrapStatusParser, parse_apt_status
from hutch.runtime.images._default_image import (
    RECIPE_LABEL,
    DefaultImageBuildError,
    default_recipe_dir,
    ensure_default_image,
    recipe_digest,
    render_progress_bar,
)
from hutch.runtime.images._store import ImageConfig, ImageNotFound, ImageStore
from tests._server import SHARED_IMAGES
from tests.support.busybox import add_busybox_image, make_busybox_rootfs

CONFIG = ImageConfig(env=("PATH=/bin", "LANG=C.UTF-8"), working_dir="/workspace", user="root")
# A v2 file capability blob: cap_net_raw in the effective and permitted sets.
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def small_rootfs(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "etc").mkdir()
    (path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (path / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(path / "bin/tool", 0o755)
    return path


def owners(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


# -- recipe -------------------------------------------------------------------------------------


def test_recipe_digest_changes_when_a_recipe_file_changes(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe"
    shutil.copytree(default_recipe_dir(), recipe, symlinks=True)
    base = recipe_digest(recipe)
    assert recipe_digest(recipe) == base  # deterministic

    with open(recipe / "packages.txt", "a") as f:
        f.write("jq\n")
    edited = recipe_digest(recipe)
    assert edited != base

    os.chmod(recipe / "setup.sh", 0o644)  # no longer executable: a different recipe
    assert recipe_digest(recipe) != edited

    (recipe / "files/etc/motd").write_text("hi\n")
    assert len({base, edited, recipe_digest(recipe)}) == 3


def test_the_default_recipe_lists_what_the_design_promises() -> None:
    packages = (default_recipe_dir() / "packages.txt").read_text().split()
    for name in [
        "bash", "git", "curl", "python3-pip", "python3-venv", "python3-ipykernel",
        "python3-jupyter-client", "python3-numpy", "python3-pandas", "python3-matplotlib",
        "nodejs", "npm", "inotify-tools", "procps",
    ]:  # fmt: skip
        assert name in packages


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_ensure_default_image_returns_the_stored_image_when_the_recipe_matches(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "images")
    recipe = tmp_path / "recipe"
    shutil.copytree(default_recipe_dir(), recipe)
    stored = store.add_rootfs(
        "default",
        small_rootfs(tmp_path / "src"),
        CONFIG,
        labels={RECIPE_LABEL: recipe_digest(recipe)},
    )
    calls: list[tuple[float, str]] = []
    image = ensure_default_image(
        store, recipe, cache_dir=tmp_path / "cache", progress=lambda f, m: calls.append((f, m))
    )
    assert image.id == stored.id
    assert calls == [(1.0, "default image is up to date")]


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_a_failed_build_says_why_and_stores_nothing(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe"
    shutil.copytree(default_recipe_dir(), recipe)
    config = (recipe / "config.json").read_text()
    (recipe / "config.json").write_text(config.replace('"bookworm"', '"no-such-suite"'))
    store = ImageStore(tmp_path / "images")
    with pytest.raises(DefaultImageBuildError) as err:
        ensure_default_image(store, recipe, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "debootstrap exited with status" in message
    # debootstrap's own words, decoded from its status records
    assert "E: No such script: /usr/share/debootstrap/scripts/no-such-suite" in message
    assert str(tmp_path / "cache/build.log") in message
    assert store.list() == []
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


# -- progress -----------------------------------------------------------------------------------


def test_apt_status_lines_parse() -> None:
    assert parse_apt_status("dlstatus:3:12.5:Retrieving file 3 of 24") == (
        "download",
        12.5,
        "Retrieving file 3 of 24",
    )
    assert parse_apt_status("pmstatus:git:80:Configuring git (amd64)") == (
        "install",
        80.0,
        "Configuring git (amd64)",
    )
    assert parse_apt_status("pmerror:x.deb:50:trying to overwrite") == (
        "error",
        50.0,
        "trying to overwrite",
    )
    assert parse_apt_status("media-change: whatever") is None
    assert parse_apt_status("garbage") is None


def test_debootstrap_status_records_parse() -> None:
    parser = DebootstrapStatusParser()
    assert parser.feed("P: 0 100 DOWNDEBS") is not None
    assert parser.feed("PF: Downloading packages") is None
    assert parser.feed("I: RETRIEVING") is None
    assert parser.feed("IA: libc6") is None
    fraction, message = parser.feed("IF: Retrieving %s") or (0.0, "")
    assert message == "Retrieving libc6"
    update = parser.feed("P: 50 100")  # wget's percentage: no phase name
    assert update is not None
    assert update[0] == pytest.approx(0.25) and update[1] == "Retrieving libc6"
    fraction, _ = parser.feed("P: 10 20 CONFBASE") or (0.0, "")
    assert fraction == pytest.approx(0.8)
    parser.feed("E: NOSCRIPT")
    parser.feed("EA: nope")
    parser.feed("EF: No such script: %s")
    assert parser.errors == ["No such script: nope"]


def test_progress_bar_prints_plain_lines_every_five_percent_when_not_a_tty() -> None:
    out = io.StringIO()
    bar = render_progress_bar(out)
    for i in range(1001):
        bar(i / 1000, f"step {i}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 21  # 0%, 5%, ..., 100%
    assert lines[0] == "  0% step 0"
    assert lines[-1] == "100% step 1000"


def test_progress_bar_redraws_one_line_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = render_progress_bar(out)
    bar(0.5, "halfway")
    bar(1.0, "done")
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "\r[###############               ]  50% halfway" in text


# -- mirror -------------------------------------------------------------------------------------


def test_image_sources_follow_the_hosts_mirror() -> None:
    host = parse_deb822_sources(
        textwrap.dedent("""\
            Types: deb deb-src
            # a comment
            URIs: http://mirror.example/debian/
            Suites: bookworm bookworm-updates
            Components: main contrib

            Types: deb
            URIs: http://mirror.example/debian-security
            Suites: bookworm-security
            Components: main

            Types: deb
            URIs: http://other.example/
            Suites: stable
            Components: main
            Enabled: no
            """)
    ) + parse_sources_list("deb [arch=amd64] http://third.example/apt bookworm extra # x\n")
    mirror, sources = image_apt_sources(host, "bookworm")
    assert mirror == "http://mirror.example/debian"
    assert "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n" in sources
    assert "URIs: http://mirror.example/debian-security\nSuites: bookworm-security\n" in sources
    assert "other.example" not in sources


def test_image_sources_fall_back_to_deb_debian_org() -> None:
    mirror, sources = image_apt_sources([], "bookworm")
    assert mirror == "http://deb.debian.org/debian"
    assert "bookworm-security" in sources


# -- image config -------------------------------------------------------------------------------


def test_image_config_json_round_trip_and_validation() -> None:
    config = ImageConfig(
        env=("A=1",), working_dir="/w", user="1000:1000", entrypoint=("/init",), cmd=("sh",)
    )
    assert ImageConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ImageConfig.from_dict({"env": ["NOEQUALS"]})
    with pytest.raises(ValueError, match="absolute"):
        ImageConfig.from_dict({"working_dir": "relative"})


# -- the store ----------------------------------------------------------------------------------


def test_image_not_found_says_what_to_do(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageNotFound) as err:
        store.get("python:3.12")
    assert isinstance(err.value, LookupError)
    assert "'python:3.12'" in str(err.value)
    assert "`hutch image ls`" in str(err.value) and "`hutch image build`" in str(err.value)
    with pytest.raises(ImageNotFound):
        store.remove("python:3.12")


def test_invalid_names_are_refused(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    for name in ["", "-x", "a b", "../up", "x" * 300]:
        with pytest.raises(ValueError, match="invalid image name"):
            store.add_rootfs(name, small_rootfs(tmp_path / f"src{len(name)}"), CONFIG)


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_add_rootfs_shifts_ownership_and_keeps_special_bits(tmp_path: Path) -> None:
    src = small_rootfs(tmp_path / "src")
    (src / "bin/su").write_bytes(b"x")
    os.chmod(src / "bin/su", 0o4755)
    (src / "bin/ping").write_bytes(b"x")
    os.setxattr(src / "bin/ping", "security.capability", CAP_NET_RAW)
    (src / "home/user").mkdir(parents=True)
    os.chown(src / "home/user", 1000, 1000)
    os.chmod(src / "home/user", 0o2775)
    (src / "weird").write_text("")
    os.chown(src / "weird", 70000, 70000)  # outside the sandbox's id range
    outside = tmp_path / "host-file"
    outside.write_text("")
    (src / "link").symlink_to(outside)  # must not be followed

    image = ImageStore(tmp_path / "images").add_rootfs("t", src, CONFIG)
    root = image.rootfs
    assert owners(root) == (HOST_ID_BASE, HOST_ID_BASE)
    assert owners(root / "etc/passwd") == (HOST_ID_BASE, HOST_ID_BASE)
    assert owners(root / "home/user") == (HOST_ID_BASE + 1000, HOST_ID_BASE + 1000)
    assert owners(root / "weird") == (HOST_ID_BASE + 65534, HOST_ID_BASE + 65534)
    assert owners(root / "link") == (HOST_ID_BASE, HOST_ID_BASE)
    assert owners(outside) == (0, 0)
    assert stat.S_IMODE(os.stat(root / "bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(root / "home/user").st_mode) == 0o2775
    assert os.getxattr(root / "bin/ping", "security.capability") == CAP_NET_RAW
    # The source is left alone unless moved.
    assert owners(src / "etc/passwd") == (0, 0)
    assert image.size_bytes > 0 and image.config == CONFIG


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_shift_ownership_is_usable_on_its_own(tmp_path: Path) -> None:
    tree = small_rootfs(tmp_path / "t")
    shift_ownership(tree, base=200_000)
    assert owners(tree / "bin/tool") == (200_000, 200_000)


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_get_list_remove(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    a = store.add_rootfs("a", small_rootfs(tmp_path / "a"), CONFIG)
    b = store.add_rootfs("b", small_rootfs(tmp_path / "b"), CONFIG, move=True)
    assert not (tmp_path / "b").exists()  # moved, not copied
    assert a.id == b.id  # same content, same config: one copy on disk
    assert len(list((tmp_path / "images/images").iterdir())) == 1
    assert [i.name for i in store.list()] == ["a", "b"]
    assert store.get("a") == a
    assert store.get(a.id[:12]).id == a.id
    assert store.get(f"sha256:{a.id}").id == a.id

    store.remove("a")
    assert [i.name for i in store.list()] == ["b"]
    assert b.rootfs.is_dir()  # still named by "b"
    store.remove("b")
    assert store.list() == []
    assert not b.rootfs.exists()
    with pytest.raises(ImageNotFound):
        store.get(a.id)


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_repointing_a_name_keeps_the_old_content_until_pruned(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    old = store.add_rootfs("app", small_rootfs(tmp_path / "v1"), CONFIG)
    v2 = small_rootfs(tmp_path / "v2")
    (v2 / "etc/version").write_text("2\n")
    new = store.add_rootfs("app", v2, CONFIG)
    assert new.id != old.id
    assert store.get("app").id == new.id
    assert store.get(old.id).rootfs.is_dir()  # a sandbox running on it keeps its lower dir
    assert store.prune(in_use=[old.id]) == []
    assert store.prune() == [old.id]
    assert not old.rootfs.exists()
    assert store.get("app").id == new.id


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_a_failure_mid_add_leaves_nothing_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(tmp_path / "images")

    def shift_then_fail(root: Path, base: int = HOST_ID_BASE) -> None:
        shift_ownership(root, base)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_images, "shift_ownership", shift_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.add_rootfs("x", small_rootfs(tmp_path / "src"), CONFIG)
    assert store.list() == []
    assert list((tmp_path / "images/images").iterdir()) == []
    assert list((tmp_path / "images/tmp").iterdir()) == []
    with pytest.raises(ImageNotFound):
        store.get("x")


def test_a_crash_mid_add_leaves_nothing_stored(tmp_path: Path) -> None:
    root = tmp_path / "images"
    small_rootfs(tmp_path / "src")
    child = subprocess.Popen(
        [sys.executable, "-c", _ADD_THEN_HANG, str(root), str(tmp_path / "src")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "copied\n"
    staged = list((root / "tmp").iterdir())
    assert staged, "the child should be mid-add"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    store = ImageStore(root)  # opening the store sweeps what the dead adder left
    assert store.list() == []
    assert list((root / "images").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []


_ADD_THEN_HANG = """
import sys, time
from pathlib import Path
from hutch.runtime.images import _store as _images

def hang(root, base=0):
    print("copied", flush=True)
    time.sleep(60)

_images.shift_ownership = hang
store = _images.ImageStore(Path(sys.argv[1]))
store.add_rootfs("x", Path(sys.argv[2]), _images.ImageConfig(("A=1",), "/", "root"))
"""


@pytest.mark.root  # as root the staged rootfs is shifted too
def test_a_live_adder_is_not_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "images"
    store = ImageStore(root)
    seen: list[int] = []

    def open_another_store_meanwhile(rootfs: Path, base: int = HOST_ID_BASE) -> None:
        ImageStore(root)  # another process would sweep here
        seen.append(len(list(rootfs.parent.iterdir())))
        if os.geteuid() == 0:
            shift_ownership(rootfs, base)

    monkeypatch.setattr(_images, "shift_ownership", open_another_store_meanwhile)
    image = store.add_rootfs("x", small_rootfs(tmp_path / "src"), CONFIG)
    assert seen == [1]  # the staged rootfs survived the other store's sweep
    assert (image.rootfs / "bin/tool").is_file()


# -- busybox ------------------------------------------------------------------------------------


def test_busybox_rootfs_has_only_busybox(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "bb")
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert (root / "bin/busybox").is_file()
    regular = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sorted(p.relative_to(root).as_posix() for p in regular) == [
        "bin/busybox",
        "etc/group",
        "etc/passwd",
    ]
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    assert (root / "workspace").is_dir()


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_busybox_image_runs_and_is_stable(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    first = add_busybox_image(store)
    again = add_busybox_image(store)
    assert first.id == again.id  # same content: adding it per test session costs no space
    assert first.name == "busybox"
    out = subprocess.run(
        ["chroot", str(first.rootfs), "/bin/sh", "-c", "echo hi from $(id -u)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "hi from 0\n"


# -- the built default image (the CI builds it before the tests) ------------------------------


@pytest.mark.sandbox
def test_the_default_image_has_the_promised_tools() -> None:
    image = ImageStore(SHARED_IMAGES).get("default")  # scripts/test builds it first
    script = (
        "python -c 'import numpy, pandas, matplotlib, ipykernel, jupyter_client' && "
        "node --version && git --version && inotifywait --help >/dev/null 2>&1; "
        "test $? -le 1 && ps --version && curl --version >/dev/null && "
        "! ls /usr/lib/python3*/EXTERNALLY-MANAGED 2>/dev/null && test -d /workspace"
    )
    # ps needs a /proc: run it as the build does, in a private mount and pid namespace.
    out = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c",
         'mount -t proc proc "$1/proc" && exec chroot "$1" /bin/bash -c "$2"', "sh",
         str(image.rootfs), script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert image.config.working_dir == "/workspace"
    assert "LANG=C.UTF-8" in image.config.env
    assert not any(e.startswith("TERM=") for e in image.config.env)
    assert image.labels[RECIPE_LABEL] == recipe_digest(default_recipe_dir())
