"""Images in, end to end: images built inside the test (busybox-static and a small Debian rootfs
with python, as OCI layouts made with umoci), pushed with skopeo to a local docker-registry on
loopback, pulled or imported through the API, then sandboxes in each are smoke-tested.

Other capabilities (files, processes, terminals, ports) extend `smoke_test` below: it gets a
sandbox and the `Expect` of its image.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hutch import Client, Conflict, ImageNotFound, InvalidRequest, RegistryError, Sandbox
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess
from tests.support.oci_images import (
    local_registry,
    make_busybox_rootfs,
    make_oci_layout,
    make_python_rootfs,
    skopeo_copy,
)

pytestmark = pytest.mark.sandbox


@dataclass(frozen=True)
class Expect:
    """What a sandbox in the image must show."""

    name: str
    uid: int
    cwd: str
    env: dict[str, str]
    has_python: bool


@dataclass
class Built:
    work: Path
    registry: str
    prefix: str
    busybox: str  # registry refs
    python: str
    oci_archive: Path
    docker_archive: Path


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    work = Path(tempfile.mkdtemp(prefix="hutch-images-", dir="/var/tmp"))
    prefix = f"t{secrets.token_hex(3)}"
    default_rootfs = ImageStore(SHARED_IMAGES).get("default").rootfs
    try:
        layout = work / "layout"
        make_oci_layout(
            layout,
            "busybox",
            make_busybox_rootfs(work / "bb-rootfs"),
            ["--config.env=GREETING=hello from busybox", "--config.workingdir=/workspace"],
        )
        make_oci_layout(
            layout,
            "python",
            make_python_rootfs(work / "py-rootfs", default_rootfs),
            [
                "--config.env=PATH=/usr/bin:/bin",
                "--config.env=GREETING=hello from python",
                "--config.workingdir=/app",
                "--config.user=app",
                "--config.cmd=python3",
            ],
        )
        oci_archive = work / "bb.oci.tar"
        docker_archive = work / "bb.docker.tar"
        skopeo_copy(f"oci:{layout}:busybox", f"oci-archive:{oci_archive}:busybox")
        skopeo_copy(f"oci:{layout}:busybox", f"docker-archive:{docker_archive}:{prefix}/bb:saved")
        with local_registry(work) as registry:
            for tag in ("busybox", "python"):
                skopeo_copy(f"oci:{layout}:{tag}", f"docker://{registry}/{prefix}/{tag}:1")
            yield Built(
                work=work,
                registry=registry,
                prefix=prefix,
                busybox=f"{registry}/{prefix}/busybox:1",
                python=f"{registry}/{prefix}/python:1",
                oci_archive=oci_archive,
                docker_archive=docker_archive,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(base_url=server.url, api_key=server.api_key) as c:
        yield c


@pytest.fixture(scope="module")
def pulled(built: Built, client: Client) -> Iterator[dict[str, Expect]]:
    images = {
        built.busybox: Expect(
            built.busybox, 0, "/workspace", {"GREETING": "hello from busybox"}, False
        ),
        built.python: Expect(built.python, 1000, "/app", {"GREETING": "hello from python"}, True),
    }
    for ref in images:
        detail = client.pull_image(ref, insecure=True)
        assert detail.name == ref
    yield images
    for ref in images:
        try:
            client.remove_image(ref)
        except ImageNotFound:
            pass


def smoke_test(sb: Sandbox, expect: Expect) -> None:
    """Every capability, in any image. Extend me."""
    r = sb.exec("echo hi; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "err\n", 3)
    r = sb.run("id", ["-u"])
    assert r.stdout.strip() == str(expect.uid), "the image's USER is exec's default"
    assert sb.exec("pwd").stdout.strip() == expect.cwd, "the image's WORKDIR is exec's default"
    for key, value in expect.env.items():
        assert sb.exec(f'printf %s "${key}"').stdout == value
    assert sb.run("id", ["-u"], user="0" if expect.has_python else "root").stdout.strip() == "0"
    r = sb.exec("cat", stdin=b"piped")
    assert r.stdout == "piped"
    if expect.has_python:
        r = sb.run("python3", ["-c", "import sys, json; print(json.dumps(sys.version_info[:2]))"])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout) == [3, 11]
    else:
        assert sb.exec("command -v python3").exit_code != 0


def test_pull_and_smoke_each_image(pulled: dict[str, Expect], sdk_env: ServerProcess) -> None:
    for ref, expect in pulled.items():
        sb = Sandbox.create(image=ref, env={"EXTRA": "1"})
        try:
            smoke_test(sb, expect)
            assert sb.exec('printf %s "$EXTRA"').stdout == "1"
        finally:
            sb.destroy()


def test_inspect_shows_the_image_config(
    pulled: dict[str, Expect], built: Built, client: Client
) -> None:
    detail = client.get_image(built.python)
    assert detail.working_dir == "/app" and detail.user == "app" and detail.cmd == ["python3"]
    assert "GREETING=hello from python" in detail.env
    assert detail.labels.get("hutch.source") == built.python
    by_id = client.get_image(detail.id[:16])
    assert by_id.id == detail.id
    assert built.python in {i.name for i in client.list_images()}


def test_import_oci_and_docker_archives(
    built: Built, client: Client, sdk_env: ServerProcess
) -> None:
    oci = client.import_image(str(built.oci_archive), name=f"{built.prefix}/oci:1")
    docker = client.import_image(str(built.docker_archive))  # named by its own tag
    try:
        assert docker.name == f"{built.prefix}/bb:saved"
        assert oci.id == docker.id, "the same rootfs and config is the same content, stored once"
        sb = Sandbox.create(image=docker.name)
        try:
            assert sb.exec("echo $GREETING").stdout == "hello from busybox\n"
        finally:
            sb.destroy()
    finally:
        client.remove_image(oci.name)
        client.remove_image(docker.name)


def test_tag_and_refuse_removing_an_image_in_use(
    pulled: dict[str, Expect], built: Built, client: Client, sdk_env: ServerProcess
) -> None:
    alias = f"{built.prefix}/alias:1"
    tagged = client.tag_image(built.busybox, alias)
    assert tagged.id == client.get_image(built.busybox).id
    sb = Sandbox.create(image=alias)
    try:
        client.remove_image(built.busybox)  # another name remains: only the name goes
        with pytest.raises(Conflict) as err:
            client.remove_image(alias)
        assert err.value.code == "image_in_use" and "destroy" in err.value.message
        assert sb.exec("echo still").stdout == "still\n"
    finally:
        sb.destroy()
    client.remove_image(alias)
    with pytest.raises(ImageNotFound):
        client.get_image(alias)
    client.pull_image(built.busybox, insecure=True)  # for the other tests


def test_bad_input(
    built: Built, client: Client, server: ServerProcess, sdk_env: ServerProcess
) -> None:
    before = {i.name for i in client.list_images()}
    with pytest.raises(ImageNotFound) as nf:
        Sandbox.create(image=f"{built.prefix}/nope:1")
    assert nf.value.status == 404 and nf.value.code == "image_not_found"
    with pytest.raises(ImageNotFound):
        client.get_image(f"{built.prefix}/nope:1")
    with pytest.raises(RegistryError) as reg:
        client.pull_image(f"{built.registry}/{built.prefix}/missing:1", insecure=True)
    assert reg.value.status == 502 and reg.value.code == "registry_error"
    assert "manifest unknown" in reg.value.message
    with pytest.raises(RegistryError):  # TLS against a plain-HTTP registry, unless insecure
        client.pull_image(built.busybox)
    truncated = built.work / "truncated.tar"
    data = built.oci_archive.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidRequest) as bad:
        client.import_image(str(truncated), name=f"{built.prefix}/bad:1")
    assert bad.value.status == 422 and bad.value.code == "image_invalid"
    arm = _with_architecture(built, "arm64")
    with pytest.raises(InvalidRequest) as arch:
        client.import_image(str(arm), name=f"{built.prefix}/arm:1")
    assert arch.value.status == 422 and "arm64" in arch.value.message
    assert {i.name for i in client.list_images()} == before
    r = httpx.post(
        f"{server.url}/v1/images/pull",
        json={"ref": built.busybox, "bogus": 1},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def _with_architecture(built: Built, arch: str) -> Path:
    layout = built.work / f"layout-{arch}"
    skopeo_copy(f"oci-archive:{built.oci_archive}", f"oci:{layout}:img")
    import subprocess

    subprocess.run(
        ["umoci", "config", "--image", f"{layout}:img", f"--architecture={arch}"], check=True
    )
    out = built.work / f"{arch}.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(layout, arcname=".")
    return out


def test_cli_image_commands(built: Built, server: ServerProcess) -> None:
    import subprocess
    import sys

    hutch = [str(Path(sys.executable).with_name("hutch")), "image"]
    env = {"HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key, "PATH": "/usr/bin:/bin"}
    name = f"{built.prefix}/cli:1"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*hutch, *args], capture_output=True, text=True, env=env, timeout=300)

    r = run("import", str(built.oci_archive), "--name", name)
    assert r.returncode == 0 and r.stdout.startswith(name), r.stderr
    r = run("pull", "--insecure", built.busybox, "--name", f"{built.prefix}/cli-pulled:1")
    assert r.returncode == 0, r.stderr
    r = run("inspect", name)
    assert json.loads(r.stdout)["config"]["env"][-1] == "GREETING=hello from busybox"
    assert run("tag", name, f"{built.prefix}/cli:2").returncode == 0
    assert name in run("ls").stdout
    r = run("rm", name, f"{built.prefix}/cli:2", f"{built.prefix}/cli-pulled:1")
    assert r.returncode == 0, r.stderr
    r = run("inspect", name)
    assert r.returncode != 0 and "image_not_found" in r.stderr


def test_a_pull_that_fails_halfway_stores_nothing(built: Built, client: Client) -> None:
    rootfs = built.work / "halfway-rootfs"
    rootfs.mkdir()
    (rootfs / "first.bin").write_bytes(secrets.token_bytes(1 << 20))
    (rootfs / "second.bin").write_bytes(secrets.token_bytes(1 << 20))
    layout = built.work / "halfway-layout"
    make_oci_layout(layout, "x", rootfs, work=built.work)
    ref = f"{built.registry}/{built.prefix}/halfway:1"
    skopeo_copy(f"oci:{layout}:x", f"docker://{ref}")
    # Corrupt the layer in the registry's storage: the fetch breaks on its digest.
    manifest = json.loads(
        httpx.get(
            f"http://{built.registry}/v2/{built.prefix}/halfway/manifests/1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).content
    )
    digest = manifest["layers"][0]["digest"].split(":")[1]
    blob = (
        built.work / "registry-data/docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    )
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    store = ImageStore(SHARED_IMAGES)
    before = (sorted(os.listdir(store.root / "images")), {i.name for i in client.list_images()})
    with pytest.raises((RegistryError, InvalidRequest)):
        client.pull_image(ref, insecure=True)
    after = (sorted(os.listdir(store.root / "images")), {i.name for i in client.list_images()})
    assert after == before
    with pytest.raises(ImageNotFound):
        client.get_image(ref)
