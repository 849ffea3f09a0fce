"""`POST /v1/images/build` (SDK `Client.build_image`, CLI `image build` with HUTCH_URL): a
context tar and a Dockerfile in, buildah's progress out as NDJSON, then the stored image or a
structured error; nothing in the context or the Dockerfile reaches the server's host files."""

from __future__ import annotations

import http.server
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Client, ImageBuildFailed, InvalidRequest, PayloadTooLarge, Sandbox
from hutch.runtime import ImageStore
from hutch.runtime.images._oci_build import BuildError, build_image, check_untrusted_dockerfile
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
    with pytest.raises(ValueError, match="reads the server's host|no RUN flags"):
        check_untrusted_dockerfile(dockerfile)


# Shapes that got past a line-by-line check, and instructions that reach the host through
# buildah itself; each as (Dockerfile, what the refusal says).
BYPASSES = [
    ("FROM \\\n  oci:/var/lib/hutch/images:x\n", "reads the server's host"),
    ("FR\\\nOM oci:/x:y\n", "reads the server's host"),
    ("FROM \\\n# a comment\n\n  dir:/etc\n", "reads the server's host"),
    ("ARG B=oci:/var/lib/hutch/images:x\nFROM ${B}\n", "no variables in FROM"),
    ("ARG B=oci:/x:y\nFROM $B AS a\n", "no variables in FROM"),
    ("# escape=`\nFROM `\n  oci:/var/lib/hutch/images:x\n", "reads the server's host"),
    ("#escape = `\nFROM scratch\nCOPY `\n  --from=dir:/ / /\n", "reads the server's host"),
    ("FROM scratch\nARG S=dir:/\nCOPY --from=${S} /etc/passwd /p\n", "no variables in --from="),
    ("FROM scratch\nCOPY --from oci:/x:y / /\n", "reads the server's host"),
    ("FROM scratch\nADD http://169.254.169.254/latest/meta-data /m\n", "fetches nothing"),
    ("FROM scratch\nADD \\\n  http://127.0.0.1:1/secret /s\n", "fetches nothing"),
    ('FROM scratch\nADD ["https://example.com/x", "/x"]\n', "fetches nothing"),
    ("FROM scratch\nADD git@github.com:o/r.git /r\n", "fetches nothing"),
    ("FROM scratch\nARG U=http://127.0.0.1:1/s\nADD $U /s\n", "no variables in ADD"),
    ("FROM scratch\nONBUILD ADD http://127.0.0.1:1/s /s\n", "fetches nothing"),
    ("FROM scratch AS a\nFROM scratch\nRUN --mount=type=bind,from=a,target=/h ls /h\n", "RUN"),
    ("FROM scratch\nRUN --mount=type=cache,target=/c true\n", "no RUN flags"),
    ("FROM scratch\nrun \\\n  --mount=type=tmpfs,target=/t true\n", "no RUN flags"),
    ("FROM scratch\nRUN --network=host true\n", "no RUN flags"),
]


@pytest.mark.parametrize(("dockerfile", "why"), BYPASSES)
def test_dockerfile_check_bypasses_are_refused(dockerfile: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_untrusted_dockerfile(dockerfile)


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM scratch\n",
        "FROM 127.0.0.1:5000/app:1\n",
        "FROM localhost:5000/app:1 AS build\nFROM scratch\nCOPY --from=build /a /a\n",
        "FROM docker://quay.io/x/y:1\n",
        "FROM busybox\n",
        "FROM busybox AS stage0\nRUN echo $HOME \\\n  && true\nFROM scratch\n"
        "COPY --from=stage0 --chown=0:0 /x /x\n# ADD http://x/ /y\n",
        "# escape=`\nFROM busybox\nRUN echo a `\n  b\\\nCOPY a b\n",
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
    dockerfile = tmp_path / "elsewhere.Dockerfile"  # outside the context
    dockerfile.write_text(
        f"FROM {base}\nRUN echo built > /built.txt\nENV BUILT=yes\nWORKDIR /srv\n"
        "RUN cat /proc/self/uid_map > /uid_map; ip -o link | cut -d: -f2 > /links\n"
        'COPY hello.txt /srv/\nCMD ["/bin/sh", "-l"]\n'
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
                assert sb.exec("pwd; echo $BUILT; cat /built.txt hello.txt").stdout == (
                    "/srv\nyes\nbuilt\nhello from the context\n"
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


def test_build_output_names_no_host_paths(base: str, sdk_env: ServerProcess) -> None:
    # buildah names the exported base, the staging context, its storage and the id map.
    for dockerfile, expected in (
        (f"FROM {base}\nCOPY missing /x\n", "missing"),
        (f"FROM {base}\nRUN false\n", "RUN false"),
    ):
        with sdk_env.client() as http:
            r = http.post(
                "/v1/images/build",
                params={"name": "t-paths:1"},
                content=_tar({"Dockerfile": dockerfile.encode()}),
            )
        assert r.status_code == 200
        events = [json.loads(line) for line in r.text.splitlines()]
        assert events[-1]["type"] == "error", events[-1]
        assert expected in r.text and f"FROM {base}" in r.text
        for host_string in (str(SHARED_IMAGES), str(sdk_env.home), "/tmp/", "1000000000"):
            assert host_string not in r.text, host_string


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
    for target in ("/etc", "../../../../../../etc", "Dockerfile"):  # any link, even inside
        status, text = post(_tar({"Dockerfile": dockerfile}, {"etc": target}))
        assert status == 422 and "build_context_invalid" in text, text
        assert "not allowed in a build context" in text
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


def _special_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        first = tarfile.TarInfo("first.txt")  # a regular file before the bad entry
        first.size = 2
        tar.addfile(first, io.BytesIO(b"x\n"))
        df = b"FROM scratch\nCOPY . /\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(df)
        tar.addfile(info, io.BytesIO(df))
        bad = tarfile.TarInfo("bad")
        bad.type = {
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "fifo": tarfile.FIFOTYPE,
            "chardev": tarfile.CHRTYPE,
        }[kind]
        bad.linkname = {"symlink": "first.txt", "hardlink": "first.txt"}.get(kind, "")
        tar.addfile(bad)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "chardev"])
def test_links_and_special_files_in_a_context_are_refused_before_unpacking(
    tmp_path: Path, kind: str
) -> None:
    from hutch.server._errors import InvalidRequest as ServerInvalidRequest
    from hutch.server.routes._image_build import _unpack_context

    archive = tmp_path / "context.tar"
    archive.write_bytes(_special_tar(kind))
    dest = tmp_path / "context"
    with pytest.raises(ServerInvalidRequest) as info:
        _unpack_context(archive, dest, 1 << 20)
    assert info.value.code == "build_context_invalid"
    assert "not allowed in a build context" in str(info.value)
    assert not dest.exists()  # nothing unpacked, not even the files before it


def test_a_context_with_too_many_entries_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hutch.server.routes import _image_build as route

    monkeypatch.setattr(route, "MAX_CONTEXT_MEMBERS", 10)
    archive = tmp_path / "context.tar"
    archive.write_bytes(_tar({f"f{i}": b"" for i in range(11)}))
    with pytest.raises(route.InvalidRequest, match="more than 10 entries"):
        route._unpack_context(archive, tmp_path / "context", 1 << 20)
    assert not (tmp_path / "context").exists()


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = b"host secret\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def host_http() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on the host's loopback, and the paths it was asked for."""
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_build_reaches_no_host_network(
    tmp_path: Path, sdk_env: ServerProcess, host_http: tuple[str, list[str]]
) -> None:
    url, seen = host_http
    # Through the API: each bypass shape, and an ADD of the host's loopback, refused up front.
    with sdk_env.client() as http_client:
        for dockerfile, _ in [*BYPASSES, (f"FROM scratch\nADD {url}/secret /s\n", "")]:
            r = http_client.post(
                "/v1/images/build",
                params={"name": "t-ssrf:1"},
                content=_tar({"Dockerfile": dockerfile.encode()}),
            )
            assert r.status_code == 422, (dockerfile, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
    # Past the check (as if it missed one): buildah itself has no network, so neither ADD
    # nor a registry FROM reaches the host's loopback.
    (tmp_path / "Dockerfile").write_text(f"FROM scratch\nADD {url}/secret /s\n")
    lines: list[str] = []
    store = ImageStore(SHARED_IMAGES)
    with pytest.raises(BuildError):
        build_image(
            store, tmp_path / "Dockerfile", tmp_path, "t-ssrf:1", out=_Out(lines), untrusted=True
        )
    assert "network is unreachable" in "".join(lines)
    (tmp_path / "Dockerfile").write_text(f"FROM {url.removeprefix('http://')}/img:1\n")
    with pytest.raises(BuildError):
        build_image(
            store, tmp_path / "Dockerfile", tmp_path, "t-ssrf:1", out=_Out(lines), untrusted=True
        )
    assert seen == []
    # The server was there to be asked all along.
    with urllib.request.urlopen(f"{url}/check", timeout=30) as r:
        assert r.read() == b"host secret\n"
    assert seen == ["/check"]


class _Out:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_multi_stage_build_through_the_api_still_works(
    tmp_path: Path, base: str, sdk_env: ServerProcess
) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base} AS stage0\nRUN echo staged > /staged.txt\n"
        "FROM scratch\nCOPY --from=stage0 /staged.txt /copied.txt\n"
    )
    name = f"t{secrets.token_hex(3)}/multi:1"
    with Client() as client:
        client.build_image(name, tmp_path)
        try:
            rootfs = ImageStore(SHARED_IMAGES).get(name).rootfs
            assert (rootfs / "copied.txt").read_text() == "staged\n"
        finally:
            client.remove_image(name)


def test_a_base_the_server_does_not_have_is_refused_up_front(
    base: str, sdk_env: ServerProcess
) -> None:
    with sdk_env.client() as http_client:
        for dockerfile in (
            "FROM busybox-not-here:1\n",
            "FROM docker://127.0.0.1:1/img:1\n",
            f"FROM {base} AS a\nFROM \\\n  nothere/img:1\n",
        ):
            r = http_client.post(
                "/v1/images/build",
                params={"name": "t-nobase:1"},
                content=_tar({"Dockerfile": dockerfile.encode()}),
            )
            assert r.status_code == 422, (dockerfile, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
            assert "pull it first" in r.json()["error"]["message"]
