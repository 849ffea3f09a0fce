"""Secrets: given to every process by name, encrypted at rest, never returned, never logged."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from hutch import InvalidRequest, Sandbox
from hutch.server.services._secrets import SecretBox, SecretKeyMismatch
from tests._server import SHARED_IMAGES, ServerProcess

SECRET = "sk-ant-hutch-test-" + "Zq9" * 12


def _views_of_other_files(root: Path) -> set[str]:
    """Mount points under `root` that only show files kept elsewhere: a sandbox's overlay
    rootfs (each write to it lands in its upperdir, under `root` too, which the walk reads) and
    its `lower`, a bind of the shared image store's rootfs (read-only to Hutch). Reading both
    read the whole default image twice per live sandbox: most of these tests' time."""
    views: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        source_root, mount_point = fields[3], fields[4]
        fstype, options = fields[fields.index("-") + 1], fields[-1]
        if not mount_point.startswith(f"{root}/"):
            continue
        upper = next(
            (o[len("upperdir=") :] for o in options.split(",") if o.startswith("upperdir=")), ""
        )
        if fstype == "overlay" and upper.startswith(f"{root}/"):
            views.add(mount_point)
        elif source_root.startswith(f"{SHARED_IMAGES}/"):
            views.add(mount_point)
    return views


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    hits: list[Path] = []
    skip = _views_of_other_files(root)
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
        for name in names:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
                # The sparse btrfs pool file holds sandbox filesystems, not Hutch's state.
                if not stat.S_ISREG(st.st_mode) or st.st_size > 64 * 1024 * 1024:
                    continue
                if needle in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def test_secret_box_round_trip_and_key_file(tmp_path: Path) -> None:
    box = SecretBox.open(tmp_path)
    key_file = tmp_path / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sealed = box.seal({"A": "one"})
    assert b"one" not in sealed["A"]
    assert SecretBox.open(tmp_path).open_all(sealed) == {"A": "one"}
    with pytest.raises(SecretKeyMismatch):
        SecretBox.open(tmp_path / "other").open_all(sealed)
    with pytest.raises(SecretKeyMismatch):  # a row moved to another name does not decrypt
        box.open_all({"B": sealed["A"]})


@pytest.mark.sandbox
def test_secret_reaches_processes_and_nothing_else(server: ServerProcess) -> None:
    needle = SECRET.encode()
    with server.client() as http:
        r = http.post(
            "/v1/sandboxes",
            json={"secrets": {"ANTHROPIC_API_KEY": SECRET}, "env": {"PLAIN": "x"}},
        )
        assert r.status_code == 201, r.text
        responses = [r]
        info = r.json()
        sid = info["id"]
        assert info["secret_names"] == ["ANTHROPIC_API_KEY"]
        assert info["env_keys"] == ["PLAIN"]
        try:
            # Every process gets it by name: a shell string, an argv, a nested shell.
            r = http.post(
                f"/v1/sandboxes/{sid}/exec",
                json={"command": 'test "$ANTHROPIC_API_KEY" = "$EXPECTED" && echo same'},
            )
            # NB: the expected value goes in through env of this exec only to compare; the
            # response carries "same", not the value.
            r = http.post(
                f"/v1/sandboxes/{sid}/exec",
                json={
                    "command": 'test "$ANTHROPIC_API_KEY" = "$EXPECTED" && echo same',
                    "env": {"EXPECTED": SECRET},
                },
            )
            assert r.json()["stdout"] == "same\n", r.text
            responses.append(r)
            r = http.post(
                f"/v1/sandboxes/{sid}/exec",
                json={"argv": ["sh", "-c", "bash -c 'echo ${#ANTHROPIC_API_KEY}'"]},
            )
            assert r.json()["stdout"] == f"{len(SECRET)}\n"
            responses.append(r)
            # It is not in the container's config.json (the agent got it over its socket).
            r = http.post(f"/v1/sandboxes/{sid}/exec", json={"command": "cat /proc/1/environ"})
            responses.append(r)
            for path in ("/v1/sandboxes", f"/v1/sandboxes/{sid}", "/openapi.json", "/v1/images"):
                responses.append(http.get(path))
            responses.append(http.put(f"/v1/sandboxes/{sid}", json={}))
            for resp in responses:
                assert needle not in resp.content, resp.request.url

            # At rest: encrypted in the database, absent from logs and bundles. A copy planted
            # in the sandbox is the positive control: the search reads its writable layer.
            plant = 'printf %s "$V" > /workspace/planted'
            assert (
                http.post(
                    f"/v1/sandboxes/{sid}/exec", json={"command": plant, "env": {"V": SECRET}}
                ).json()["exit_code"]
                == 0
            )
            planted = _files_containing(server.home, needle)
            assert planted and {p.name for p in planted} == {"planted"}, planted
            http.post(f"/v1/sandboxes/{sid}/exec", json={"command": "rm /workspace/planted"})
            hits = _files_containing(server.home, needle)
            assert hits == [], hits
            db = sqlite3.connect(f"file:{server.home / 'hutch.db'}?mode=ro", uri=True)
            rows = db.execute(
                "SELECT name, ciphertext FROM sandbox_secrets WHERE sandbox_id = ?", (sid,)
            ).fetchall()
            assert [row[0] for row in rows] == ["ANTHROPIC_API_KEY"]
            key_file = server.home / "secrets.key"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        finally:
            assert http.delete(f"/v1/sandboxes/{sid}").status_code == 204
        # Removed on destroy.
        assert (
            db.execute(
                "SELECT COUNT(*) FROM sandbox_secrets WHERE sandbox_id = ?", (sid,)
            ).fetchone()[0]
            == 0
        )
        db.close()
        assert needle not in server.log_path.read_bytes()


@pytest.mark.sandbox
def test_another_sandbox_does_not_see_the_secret(sdk_env: ServerProcess) -> None:
    with Sandbox.create(secrets={"TOKEN_A": SECRET}) as a, Sandbox.create() as b:
        assert a.info().secret_names == ["TOKEN_A"]
        assert a.exec("echo ${#TOKEN_A}").stdout == f"{len(SECRET)}\n"
        # The secret is put together in a file: no command line or environment of the probe
        # holds it whole, so any environ that matches belongs to someone else.
        half = len(SECRET) // 2
        probe = (
            'echo "[$TOKEN_A]"; printf %s%s "$HEAD" "$TAIL" > /dev/shm/pat; '
            "grep -l -s -F -f /dev/shm/pat /proc/[0-9]*/environ; true"
        )
        halves = {"HEAD": SECRET[:half], "TAIL": SECRET[half:]}
        assert b.exec(probe, env=halves).stdout == "[]\n"
        # Positive control: the same probe finds it in the sandbox that was given it.
        found = a.exec(probe, env=halves).stdout.splitlines()
        assert found[0] == f"[{SECRET}]" and found[1:], found
        # The server's key file is on the host, out of reach of every sandbox.
        probe = f"cat {sdk_env.home / 'secrets.key'} || find / -name secrets.key 2>/dev/null"
        assert a.exec(probe).stdout == ""


@pytest.mark.sandbox
@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "A=B"])
def test_invalid_secret_name_is_422(server: ServerProcess, name: str) -> None:
    with server.client() as http:
        r = http.post("/v1/sandboxes", json={"secrets": {name: SECRET}})
    assert r.status_code == 422
    body = r.json()["error"]
    assert body["code"] == "invalid_request"
    assert "secrets" in body["message"]
    assert SECRET not in r.text


@pytest.mark.sandbox
def test_invalid_secret_name_through_sdk(sdk_env: ServerProcess) -> None:
    with pytest.raises(InvalidRequest) as err:
        Sandbox.create(secrets={"NOT-VALID": "v"})
    assert "NOT-VALID" in str(err.value)


@pytest.mark.sandbox
def test_secrets_survive_a_crash_and_a_lost_container(busybox_image: str) -> None:
    """kill -9 the server and kill the container while it is down: recovery restarts the
    container, whose new agent gets the secrets again (from the encrypted store)."""
    import subprocess
    import tempfile

    from tests.conftest import _cleanup_home

    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-secrets-", dir="/var/tmp")))
    srv.start()
    try:
        opts = {"base_url": srv.url, "api_key": srv.api_key}
        sb = Sandbox.create(secrets={"TOKEN": SECRET}, **opts)
        assert sb.exec("echo ${#TOKEN}").stdout == f"{len(SECRET)}\n"
        srv.kill9()
        runc = ["runc", "--root", str(srv.home / "runc")]
        subprocess.run([*runc, "kill", sb.id, "KILL"], check=True)
        for _ in range(100):
            state = subprocess.run([*runc, "state", sb.id], capture_output=True, text=True)
            if '"stopped"' in state.stdout:
                break
            time.sleep(0.05)
        srv.start()
        assert sb.exec("echo ${#TOKEN}").stdout == f"{len(SECRET)}\n"
        sb.destroy()
        assert SECRET.encode() not in srv.log_path.read_bytes()
    finally:
        srv.stop()
        _cleanup_home(srv)
