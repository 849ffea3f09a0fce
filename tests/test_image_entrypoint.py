"""Image ENTRYPOINT/CMD: a shell command becomes the shell of sessions and terminals;
`start_entrypoint=True` runs it as the process `entrypoint` (with the image's user, env and
working directory), so an image that serves HTTP serves at once, through a preview URL too."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Client, InvalidRequest, Sandbox
from hutch.runtime.images._image_defaults import image_shell
from hutch.runtime.images._store import ImageConfig
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.busybox import make_busybox_rootfs
from tests.support.oci_images import make_oci_layout, skopeo_copy


def config(entrypoint: tuple[str, ...] = (), cmd: tuple[str, ...] = ()) -> ImageConfig:
    return ImageConfig(env=(), working_dir="/", user="root", entrypoint=entrypoint, cmd=cmd)


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "shell"),
    [
        ((), ("bash",), ["bash"]),
        ((), ("/bin/ash", "-l"), ["/bin/ash", "-l"]),
        (("/usr/bin/zsh",), ("--login",), ["/usr/bin/zsh", "--login"]),
        (("dash",), (), ["dash"]),
        ((), ("sh", "-c", "nginx"), None),  # runs nginx
        ((), ("bash", "-lc", "node app.js"), None),
        ((), ("sh", "/entry.sh"), None),  # a script
        ((), ("python3",), None),
        ((), (), None),
    ],
)
def test_which_image_commands_are_shells(
    entrypoint: tuple[str, ...], cmd: tuple[str, ...], shell: list[str] | None
) -> None:
    assert image_shell(config(entrypoint, cmd)) == shell


SITE = "<h1>served by the image's entrypoint</h1>\n"


@dataclass
class Images:
    shell: str  # CMD ["/bin/ash", "-il"]
    app: str  # ENTRYPOINT sh -c: prints env/uid/cwd, then httpd on 8080 as nobody
    bare: str  # neither ENTRYPOINT nor CMD
    broken: str  # ENTRYPOINT a file that is not there


@pytest.fixture(scope="module")
def images(server: ServerProcess) -> Iterator[Images]:
    work = Path(tempfile.mkdtemp(prefix="hutch-entrypoint-", dir="/var/tmp"))
    prefix = f"ep{secrets.token_hex(3)}"
    names = Images(
        shell=f"{prefix}/shell:1",
        app=f"{prefix}/app:1",
        bare=f"{prefix}/bare:1",
        broken=f"{prefix}/broken:1",
    )
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        (rootfs / "srv").mkdir()
        (rootfs / "srv/index.html").write_text(SITE)
        layout = work / "layout"
        make_oci_layout(layout, "shell", rootfs, ["--config.cmd=/bin/ash", "--config.cmd=-il"])
        make_oci_layout(
            layout,
            "app",
            rootfs,
            [
                "--config.env=PATH=/bin:/usr/bin:/sbin:/usr/sbin",
                "--config.env=GREETING=hello from the image",
                "--config.workingdir=/srv",
                "--config.user=65534:65534",
                "--config.entrypoint=/bin/sh",
                "--config.entrypoint=-c",
                '--config.cmd=echo "$GREETING uid=$(id -u) cwd=$(pwd)"; '
                "exec httpd -f -p 8080 -h /srv",
            ],
        )
        make_oci_layout(layout, "bare", rootfs)
        make_oci_layout(layout, "broken", rootfs, ["--config.entrypoint=/opt/not-there"])
        with Client(base_url=server.url, api_key=server.api_key) as client:
            for tag in ("shell", "app", "bare", "broken"):
                archive = work / f"{tag}.tar"
                skopeo_copy(f"oci:{layout}:{tag}", f"oci-archive:{archive}:{tag}")
                client.import_image(str(archive), name=getattr(names, tag))
            yield names
            for name in (names.shell, names.app, names.bare, names.broken):
                client.remove_image(name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


pytestmark = pytest.mark.sandbox


def test_inspect_shows_entrypoint_and_cmd(images: Images, sdk_env: ServerProcess) -> None:
    with Client() as client:
        app = client.get_image(images.app)
        assert app.entrypoint == ["/bin/sh", "-c"]
        assert app.cmd[0].startswith('echo "$GREETING')
        assert client.get_image(images.shell).cmd == ["/bin/ash", "-il"]


def test_a_shell_command_is_the_shell_of_sessions_and_terminals(
    images: Images, sdk_env: ServerProcess
) -> None:
    with Sandbox.create(image=images.shell) as sb:
        session = sb.create_session()
        # The image's `-il` loses its `i` in a session: no prompts in a command's output.
        result = session.exec('echo "$0"; echo done >&2')
        assert (result.stdout, result.stderr) == ("/bin/ash\n", "done\n")
        assert session.exec("case $- in *i*) echo interactive;; esac").stdout == ""
        with sb.terminal() as term:
            assert [t["shell"] for t in sb.list_terminals()] == ["/bin/ash"]
            term.send(b'echo "shell=$0."\n')
            term.read_until(b"shell=/bin/ash.")
    # Where the command is not a shell, the usual default (bash, else sh).
    with Sandbox.create(image=images.app) as sb, sb.terminal():
        assert [t["shell"] for t in sb.list_terminals()] == ["/bin/sh"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bash", "-il"], ["bash", "-l"]),
        (["bash", "-i"], ["bash"]),
        (["bash", "-l", "--interactive"], ["bash", "-l"]),
        (["/bin/zsh", "-lis"], ["/bin/zsh", "-ls"]),
        (["bash", "-o", "vi", "-i"], ["bash", "-o", "vi"]),
        (["bash", "+O", "extglob", "-li"], ["bash", "+O", "extglob", "-l"]),
        (["bash", "--rcfile", "/r", "-il"], ["bash", "--rcfile", "/r", "-l"]),
        (["bash", "-l", "--", "-i"], ["bash", "-l", "--", "-i"]),  # operands stay
        (["sh", "-c", "echo -i", "-i"], ["sh", "-c", "echo -i", "-i"]),
        (["bash"], ["bash"]),
    ],
)
def test_sessions_strip_interactive_options(argv: list[str], expected: list[str]) -> None:
    from hutch.agent._sessions import non_interactive

    assert non_interactive(argv) == expected


def test_start_entrypoint_serves_at_once_through_a_preview_url(
    images: Images, sdk_env: ServerProcess
) -> None:
    with Sandbox.create(image=images.app, start_entrypoint=True) as sb:
        proc = sb.get_process("entrypoint")
        assert proc.status == "running"
        assert proc.info.argv[:2] == ["/bin/sh", "-c"]
        proc.wait_for_port(8080, mode="http", timeout=30)
        logs = proc.logs()
        assert logs.stdout == "hello from the image uid=65534 cwd=/srv\n"
        url = sb.expose_port(8080).url
        parts = urlsplit(url)
        response = httpx.get(
            sdk_env.url + "/index.html", headers={"Host": parts.netloc}, timeout=30
        )
        assert response.status_code == 200 and response.text == SITE
        proc.kill()
        assert proc.wait(timeout=30).status == "killed"
        # The whole tree went: the image's server no longer answers behind the preview.
        gone = httpx.get(sdk_env.url + "/index.html", headers={"Host": parts.netloc}, timeout=30)
        assert gone.status_code == 502, (gone.status_code, gone.text)


def test_start_entrypoint_bad_input(images: Images, sdk_env: ServerProcess) -> None:
    before = {s.id for s in Sandbox.list()}
    with pytest.raises(InvalidRequest) as info:
        Sandbox.create(image=images.bare, start_entrypoint=True)
    assert info.value.code == "image_has_no_entrypoint"
    with pytest.raises(InvalidRequest) as info:
        Sandbox.create(image=images.broken, start_entrypoint=True)
    assert info.value.code == "entrypoint_failed"
    assert "/opt/not-there" in str(info.value)
    assert {s.id for s in Sandbox.list()} == before  # nothing left behind
    # Without start_entrypoint nothing runs, even where the image has a command.
    with Sandbox.create(image=images.app) as sb:
        assert sb.list_processes() == []


def test_the_image_user_is_the_default_of_processes_sessions_and_terminals(
    images: Images, sdk_env: ServerProcess
) -> None:
    with Sandbox.create(image=images.app) as sb:
        assert sb.exec("id -u").stdout == "65534\n"
        proc = sb.start_process("id -u; pwd")
        proc.wait(timeout=30)
        assert proc.logs().stdout == "65534\n/srv\n"
        assert sb.create_session().exec("id -u; pwd").stdout == "65534\n/srv\n"
        with sb.terminal() as term:
            term.send(b'echo "uid=$(id -u)."\n')
            term.read_until(b"uid=65534.")
            # The user owns its terminal: programs that reopen it by name (tmux) can.
            term.send(b'echo "tty=$(stat -c %u "$(tty)")."\n')
            term.read_until(b"tty=65534.")
        # An explicit user still wins.
        assert sb.start_process("id -u", user="0").wait(timeout=30).exit_code == 0


def test_cli_create_start_entrypoint(images: Images, sdk_env: ServerProcess) -> None:
    hutch = Path(sys.executable).with_name("hutch")
    env = {**os.environ, "HUTCH_URL": sdk_env.url, "HUTCH_API_KEY": sdk_env.api_key}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(hutch), *args], capture_output=True, text=True, env=env, timeout=120
        )

    created = run("create", "--image", images.app, "--start-entrypoint")
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    try:
        ps = run("ps", sandbox_id)
        assert ps.returncode == 0 and "entrypoint" in ps.stdout, ps.stdout + ps.stderr
        refused = run("create", "--image", images.bare, "--start-entrypoint")
        assert refused.returncode != 0 and "image_has_no_entrypoint" in refused.stderr
    finally:
        run("rm", sandbox_id)


def test_a_pooled_sandbox_starts_its_entrypoint(images: Images, sdk_env: ServerProcess) -> None:
    from hutch.runtime import ImageStore
    from tests._server import SHARED_IMAGES, runtime_ids, wait_for

    store = ImageStore(SHARED_IMAGES)
    pooled = f"ep{secrets.token_hex(3)}/pooled:1"
    store.tag(images.app, pooled)

    class PoolServer(ServerProcess):
        def env(self) -> dict[str, str]:
            return {**super().env(), "HUTCH_WARM_POOLS": f"{pooled}=1"}

    srv = PoolServer(Path(tempfile.mkdtemp(prefix="hutch-ep-pool-", dir="/var/tmp")))
    srv.start()
    try:
        opts = {"base_url": srv.url, "api_key": srv.api_key}
        with Client(**opts) as client:  # type: ignore[arg-type]
            wait_for(lambda: client.request("GET", "/v1/pools")["pools"][0]["ready"] == 1)
        with Sandbox.create(image=pooled, start_entrypoint=True, **opts) as sb:  # type: ignore[arg-type]
            assert runtime_ids(srv.home)[sb.id].startswith("pool-"), "it came from the pool"
            proc = sb.get_process("entrypoint")
            proc.wait_for_port(8080, mode="http", timeout=30)
            assert proc.logs().stdout == "hello from the image uid=65534 cwd=/srv\n"
    finally:
        srv.stop()
        _cleanup_home(srv)
        store.remove(pooled)
