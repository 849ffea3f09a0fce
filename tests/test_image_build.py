"""`hutch image build -f Dockerfile [context]` with buildah: FROM an image Hutch has, and FROM
scratch; the result runs, with its ENV and WORKDIR as exec's defaults."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from hutch import Client, Sandbox
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess

pytestmark = pytest.mark.sandbox

HUTCH = Path(sys.executable).with_name("hutch")


def build(tmp_path: Path, dockerfile: str, name: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return subprocess.run(
        [
            str(HUTCH),
            "image",
            "build",
            "-f",
            str(tmp_path / "Dockerfile"),
            "-t",
            name,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HUTCH_IMAGES_DIR": str(SHARED_IMAGES), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_build_from_a_hutch_image_and_from_scratch(
    tmp_path: Path, busybox_image: str, server: ServerProcess
) -> None:
    (tmp_path / "hello.txt").write_text("hello from the context\n")
    name = f"t{secrets.token_hex(3)}/built:1"
    base = f"t{secrets.token_hex(3)}/base:1"  # a tagged name, as a pulled image has
    ImageStore(SHARED_IMAGES).tag(busybox_image, base)
    proc = build(
        tmp_path,
        f"FROM {base}\nRUN echo built > /built.txt\nENV BUILT=yes\nWORKDIR /srv\n"
        "COPY hello.txt /srv/hello.txt\n",
        name,
    )
    assert proc.returncode == 0, proc.stderr
    assert "STEP" in proc.stderr, "buildah's progress is shown"
    scratch = f"t{secrets.token_hex(3)}/scratch:1"
    proc = build(tmp_path, "FROM scratch\nCOPY hello.txt /hello.txt\n", scratch)
    assert proc.returncode == 0, proc.stderr
    with Client(base_url=server.url, api_key=server.api_key) as client:
        try:
            assert client.get_image(scratch).size_bytes > 0
            sb = Sandbox.create(image=name, client=client)
            try:
                assert sb.exec("pwd; echo $BUILT; cat /built.txt hello.txt").stdout == (
                    "/srv\nyes\nbuilt\nhello from the context\n"
                )
                assert sb.exec("stat -c %u hello.txt").stdout == "0\n"
            finally:
                sb.destroy()
        finally:
            client.remove_image(name)
            client.remove_image(scratch)
            client.remove_image(base)


def test_build_failure_is_reported(tmp_path: Path) -> None:
    proc = build(tmp_path, "FROM scratch\nRUN /no/such/program\n", "t-fail:1")
    assert proc.returncode != 0
    assert "building t-fail:1 failed" in proc.stderr
