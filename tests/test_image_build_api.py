"""`POST /v1/images/build` (SDK `Client.build_image`, CLI `image build` with HUTCH_URL): a
context tar and a Dockerfile in, buildah's progress out as NDJSON, then the stored image or a
structured error; nothing in the context or the Dockerfile reaches the server's host files."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Client, ImageBuildFailed, InvalidRequest, PayloadTooLarge, Sandbox
from hutch.runtime import ImageStore
from hutch.runtime._oci_build import check_untrusted_dockerfile
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home

HUTCH = Path(sys.executable).with_name("hutch")
HOST_PASSWD = Path("/etc/passwd").read_text()


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM dir:/etc\n",
        "FROM oci:/var/lib/hutch/images:x\n",
        "FROM --platform=linux/amd64 docker-archive:/root/x.tar AS a\n",
        "FROM scratch\nCOPY --from=oci-archive:/tmp/x.tar / /\n",
        "FROM scratch\nRUN --mount=type=bind,from=dir:/,source=/,target=/h true\n",
        "FROM containers-storage:foo\n",
    ],
)
def test_dockerfiles_naming_host_transports_are_refused(dockerfile: str) -> None:
    with pytest.raises(ValueError, match="reads the server's host"):
        check_untrusted_dockerfile(dockerfile)


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM scratch\n",
        "FROM 127.0.0.1:5000/app:1\n",
        "FROM localhost:5000/app:1 AS build\nFROM scratch\nCOPY --from=build /a /a\n",
        "FROM docker://quay.io/x/y:1\n",
        "FROM busybox\n",
    ],
)
def test_ordinary_dockerfiles_pass(dockerfile: str) -> None:
    check_untrusted_dockerfile(dockerfile)


pytestmark = pytest.mark.sandbox


@pytest.fixture()
def base(busybox_image: str) -> Iterator[str]:
    name = f"t{secrets.token_hex(3)}/base:1"
    store = ImageStore(SHARED_IMAGES)
    store.tag(busybox_image, name)
    yield name
    store.remove(name)


def test_build_through_the_api_streams_progress_and_stores_the_image(
    tmp_path: Path, base: str, sdk_env: ServerProcess
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app/hello.txt").write_text("hello from the context\n")
    (tmp_path / "app/link").symlink_to("hello.txt")  # a link that stays inside is fine
    dockerfile = tmp_path / "elsewhere.Dockerfile"  # outside the context
    dockerfile.write_text(
        f"FROM {base}\nRUN echo built > /built.txt\nENV BUILT=yes\nWORKDIR /srv\n"
        "RUN cat /proc/self/uid_map > /uid_map; ip -o link | cut -d: -f2 > /links\n"
        'COPY hello.txt link /srv/\nCMD ["/bin/sh", "-l"]\n'
    )
    name = f"t{secrets.token_hex(3)}/api:1"
    lines: list[str] = []
    with Client() as client:
        image = client.build_image(
            name, tmp_path / "app", dockerfile=dockerfile, on_progress=lines.append
        )
        try:
            assert image.name == name and image.cmd == ["/bin/sh", "-l"]
            assert any(line.startswith("STEP") for line in lines), lines
            with Sandbox.create(image=name, client=client) as sb:
                assert sb.exec("pwd; echo $BUILT; cat /built.txt hello.txt link").stdout == (
                    "/srv\nyes\nbuilt\nhello from the context\nhello from the context\n"
                )
                assert sb.exec("stat -c %u /built.txt /srv/hello.txt").stdout == "0\n0\n"
                # RUN steps ran as an unprivileged host uid, with no network but loopback.
                assert sb.exec("cat /uid_map").stdout.split() == ["0", "1000000000", "65536"]
                assert sb.exec("cat /links").stdout.split() == ["lo"]
        finally:
            client.remove_image(name)


def test_a_failing_step_ends_the_stream_with_its_output(
    tmp_path: Path, sdk_env: ServerProcess
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /x\nRUN /no/such/program\n")
    with Client() as client, pytest.raises(ImageBuildFailed) as info:
        client.build_image("t-fail:1", tmp_path)
    assert info.value.status == 422 and info.value.output_tail
    assert "/no/such/program" in "\n".join(info.value.output_tail)
    # The raw stream: progress lines, then one error line.
    with sdk_env.client() as http:
        r = http.post(
            "/v1/images/build", params={"name": "t-fail:1"}, content=_tar({"Dockerfile": b"FROM"})
        )
        assert r.status_code == 200
        events = [json.loads(line) for line in r.text.splitlines()]
        assert events[-1]["type"] == "error"
        assert events[-1]["error"]["code"] == "image_build_failed"


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for path, target in (links or {}).items():
            info = tarfile.TarInfo(path)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def test_host_files_do_not_leak_into_a_build(tmp_path: Path, sdk_env: ServerProcess) -> None:
    def post(body: bytes, **params: str) -> tuple[int, str]:
        with sdk_env.client() as http:
            r = http.post("/v1/images/build", params={"name": "t-leak:1", **params}, content=body)
            return r.status_code, r.text

    dockerfile = b"FROM scratch\nCOPY etc /etc-copy\n"
    # A context symlink to the host's /etc (absolute, or climbing out) is refused.
    for target in ("/etc", "../../../../../../etc"):
        status, text = post(_tar({"Dockerfile": dockerfile}, {"etc": target}))
        assert status == 422 and "build_context_invalid" in text, text
    # Paths that climb out of the context, or a Dockerfile outside it.
    status, text = post(_tar({"../escape": b"x", "Dockerfile": dockerfile}))
    assert status == 422 and "build_context_invalid" in text
    status, text = post(_tar({"Dockerfile": dockerfile}), dockerfile="../../etc/passwd")
    assert status == 422 and "inside the build context" in text
    status, text = post(_tar({"Dockerfile": b"FROM dir:/etc\n"}))
    assert status == 422 and "reads the server's host" in text
    # COPY of a path above the context: buildah keeps it inside the context.
    status, text = post(
        _tar({"Dockerfile": b"FROM scratch\nCOPY ../../../../etc/passwd /leak\n", "x": b""})
    )
    assert status == 200
    events = [json.loads(line) for line in text.splitlines()]
    assert "root:x:0:0" not in text
    if events[-1]["type"] == "image":  # it copied nothing of the host's
        rootfs = ImageStore(SHARED_IMAGES).get("t-leak:1").rootfs
        leaked = rootfs / "leak"
        assert not leaked.exists() or leaked.read_text() != HOST_PASSWD
        ImageStore(SHARED_IMAGES).remove("t-leak:1")
    else:
        assert events[-1]["error"]["code"] == "image_build_failed"


class SmallContextServer(ServerProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_MAX_BUILD_CONTEXT_BYTES": "4096"}


def test_a_context_over_the_limit_is_413(tmp_path: Path) -> None:
    srv = SmallContextServer(Path(tempfile.mkdtemp(prefix="hutch-build-", dir="/var/tmp")))
    srv.start()
    try:
        (tmp_path / "Dockerfile").write_text("FROM scratch\n")
        (tmp_path / "big").write_bytes(os.urandom(64 * 1024))
        with Client(base_url=srv.url, api_key=srv.api_key) as client:
            with pytest.raises(PayloadTooLarge, match="HUTCH_MAX_BUILD_CONTEXT_BYTES"):
                client.build_image("t-big:1", tmp_path)
            # A gzip bomb: small on the wire, large unpacked.
            bomb = io.BytesIO()
            with tarfile.open(fileobj=bomb, mode="w:gz") as tar:
                info = tarfile.TarInfo("zeros")
                info.size = 1 << 20
                tar.addfile(info, io.BytesIO(bytes(1 << 20)))
            with srv.client() as http:
                r = http.post("/v1/images/build", params={"name": "t:1"}, content=bomb.getvalue())
            assert r.status_code == 413
            small = tmp_path / "small"
            small.mkdir()
            (small / "Dockerfile").write_text("FROM scratch\n")
            with pytest.raises(InvalidRequest, match="invalid image name"):
                client.build_image("bad name with spaces", small)
    finally:
        srv.stop()
        _cleanup_home(srv)


def test_cli_builds_through_the_api_when_hutch_url_is_set(
    tmp_path: Path, sdk_env: ServerProcess
) -> None:
    (tmp_path / "hello.txt").write_text("hi\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    name = f"t{secrets.token_hex(3)}/cli:1"
    proc = subprocess.run(
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
        env={**os.environ, "HUTCH_URL": sdk_env.url, "HUTCH_API_KEY": sdk_env.api_key},
    )
    assert proc.returncode == 0, proc.stderr
    assert "STEP" in proc.stderr and proc.stdout.startswith(name)
    with Client() as client:
        assert client.get_image(name).labels.get("hutch.built-from") == "api"
        client.remove_image(name)
