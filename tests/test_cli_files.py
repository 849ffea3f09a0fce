"""`hutch cp` both ways (files, directories, stdin/stdout) and `hutch files`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hutch import Sandbox
from hutch.cli._files import safe_relative, split_remote
from tests._server import HUTCH_BIN, ServerProcess


def test_only_links_inside_the_copied_tree_are_made_on_the_host() -> None:
    from hutch.cli._files import _link_stays_inside

    assert _link_stays_inside("a/b", "../c") and _link_stays_inside("a", "b/c")
    for path, target in (("a", "/etc/passwd"), ("a/b", "../../c"), ("a", ".."), ("a", "")):
        assert not _link_stays_inside(path, target), (path, target)


def test_split_remote_and_safe_relative() -> None:
    assert split_remote("sb-1:data/x") == ("sb-1", "data/x")
    assert split_remote("sb-1:") == ("sb-1", ".")
    assert split_remote("./a:b") is None and split_remote("file.txt") is None
    assert safe_relative("a/b") == Path("a/b")
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", ""):
        with pytest.raises(ValueError):
            safe_relative(bad)


@pytest.mark.sandbox
def test_cp_both_ways_and_files(server: ServerProcess, tmp_path: Path) -> None:
    env = {**os.environ, "HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key}

    def hutch(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(HUTCH_BIN), *args], env=env, input=stdin, capture_output=True, timeout=120
        )

    project = tmp_path / "project"
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (project / ".env").write_text("SECRET=1\n")
    (project / "run.sh").write_text("#!/bin/sh\necho ok\n")
    (project / "run.sh").chmod(0o755)
    (project / "latest").symlink_to("src/pkg/mod.py")  # links go as links, not as copies
    (project / "pkgs").symlink_to("src/pkg")
    (tmp_path / "one.txt").write_bytes(b"one")

    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
        r = hutch("cp", str(tmp_path / "one.txt"), f"{sb.id}:in/")
        assert r.returncode == 0, r.stderr
        assert sb.read_file("in/one.txt") == b"one"
        r = hutch("cp", str(project), f"{sb.id}:/srv/app")
        assert r.returncode == 0, r.stderr
        assert sb.read_file("/srv/app/src/pkg/mod.py") == b"x = 1\n"
        assert sb.read_file("/srv/app/.env") == b"SECRET=1\n"
        assert sb.exec("/srv/app/run.sh").stdout == "ok\n"
        for link, target in (("latest", "src/pkg/mod.py"), ("pkgs", "src/pkg")):
            info = sb.stat(f"/srv/app/{link}")
            assert (info.type, info.target) == ("symlink", target), info
        assert b"skipping" not in r.stderr
        r = hutch("cp", "-", f"{sb.id}:piped.bin", stdin=b"\x00\x01piped")
        assert r.returncode == 0 and sb.read_file("piped.bin") == b"\x00\x01piped"

        sb.exec("ln -s /etc/passwd /srv/app/link")
        out = tmp_path / "out"
        out.mkdir()
        r = hutch("cp", f"{sb.id}:/srv/app", str(out))
        assert r.returncode == 0, r.stderr
        assert (out / "app" / "src" / "pkg" / "mod.py").read_text() == "x = 1\n"
        assert os.access(out / "app" / "run.sh", os.X_OK)
        # Links inside the tree come back as links; one out of it is never made on the host.
        assert os.readlink(out / "app" / "latest") == "src/pkg/mod.py"
        assert (out / "app" / "pkgs" / "mod.py").read_text() == "x = 1\n"
        assert not (out / "app" / "link").is_symlink()
        assert b"link -> /etc/passwd (a link out of the copied tree)" in r.stderr
        r = hutch("cp", f"{sb.id}:in/one.txt", str(tmp_path / "back.txt"))
        assert r.returncode == 0 and (tmp_path / "back.txt").read_bytes() == b"one"
        r = hutch("cp", f"{sb.id}:piped.bin", "-")
        assert r.stdout == b"\x00\x01piped"

        r = hutch("files", sb.id, "/srv/app", "-r", "-a")
        assert r.returncode == 0, r.stderr
        listing = r.stdout.decode()
        assert (
            "src/pkg/mod.py" in listing and ".env" in listing and "link -> /etc/passwd" in listing
        )
        r = hutch("cp", f"{sb.id}:nope.txt", str(tmp_path / "x"))
        assert r.returncode == 1 and b"file_not_found" in r.stderr
        r = hutch("cp", "a", "b")
        assert r.returncode == 2
