"""The spec a gVisor sandbox gets, derived from the runc one (pure: no root, no runsc)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hutch.runtime.container._gvisor import PID_MAX, gvisor_spec, host_tasks_limit
from hutch.runtime.container._oci import Mount
from tests.test_oci import HOME, make_spec

SOCKET_DIR = HOME / "sandboxes/sb-1/sock"
DISK = (HOME / "storage/sb-1", HOME / "sandboxes/sb-1/disk")


def _gvisor_json() -> dict[str, object]:
    lxcfs = Mount.bind(Path("/var/lib/hutch/lxcfs/proc/meminfo"), "/proc/meminfo", readonly=True)
    spec = make_spec(env=("PATH=/bin", "HUTCH_AGENT_WORK_FDS=4,5"))
    spec = dataclasses.replace(spec, mounts=(*spec.mounts, lxcfs))
    return gvisor_spec(spec, socket_dir=SOCKET_DIR, storage=DISK).to_json()


def test_no_user_or_network_namespace_and_no_id_maps() -> None:
    linux = _gvisor_json()["linux"]
    assert isinstance(linux, dict)
    kinds = {ns["type"] for ns in linux["namespaces"]}
    # runsc cannot make a user namespace (idmapped layers instead) and runs inside the
    # sandbox's own netns (made before it): neither may be asked for.
    assert "user" not in kinds and "network" not in kinds and "pid" in kinds
    assert linux["uidMappings"] == [] and linux["gidMappings"] == []
    # The host pids limit also counts the sentry's tasks: 100 processes need far more.
    assert linux["resources"]["pids"]["limit"] == host_tasks_limit(100, int(PID_MAX.read_text()))


def test_host_pids_limit_covers_the_ptrace_stubs_within_a_share_of_the_host() -> None:
    # Stubs grow as address spaces x sentry threads: a 64-pid fork bomb took up to 2479 host
    # tasks, more than the 1728 of 24 per process, which ended its sandbox.
    assert host_tasks_limit(64, 4_194_304) == 192 + 64 * (64 + 64)
    # No sandbox takes more than a quarter of a small host's pids ...
    assert host_tasks_limit(64, 32_768) == 8192
    assert host_tasks_limit(200, 32_768) == 8192
    # ... nor less than it had before the bound (24 per process).
    assert host_tasks_limit(512, 32_768) == 192 + 24 * 512
    assert host_tasks_limit(16, 32_768) == 192 + 16 * 80


def test_agent_binds_its_socket_in_the_one_shared_directory() -> None:
    spec = _gvisor_json()
    process = spec["process"]
    assert isinstance(process, dict)
    assert "HUTCH_AGENT_LISTEN_PATH=/.hutch/sock/agent.sock" in process["env"]
    assert not any(e.startswith("HUTCH_AGENT_WORK_FDS=") for e in process["env"])
    mounts = {m["destination"]: m for m in spec["mounts"]}  # type: ignore[union-attr]
    assert mounts["/.hutch/sock"]["source"] == str(SOCKET_DIR)
    assert "rw" in mounts["/.hutch/sock"]["options"]


def test_sentry_owned_paths_are_not_mounted_over_and_etc_comes_idmapped() -> None:
    mounts = {m["destination"]: m for m in _gvisor_json()["mounts"]}  # type: ignore[union-attr]
    assert "/proc/meminfo" not in mounts and "/sys/fs/cgroup" not in mounts
    assert "/proc" in mounts and "/sys" in mounts
    # /etc/hosts etc. come through the disk's idmapped view, so root inside owns them.
    assert mounts["/etc/hosts"]["source"] == str(DISK[1] / "etc/hosts")


def test_etc_of_a_per_sandbox_range_view_comes_from_the_gvisor_view_too() -> None:
    store = HOME / "sandboxes/sb-1/store/etc"
    spec = make_spec()
    mounts = tuple(
        dataclasses.replace(m, source=str(store / Path(m.source).name))
        if m.destination == "/etc/hosts"
        else m
        for m in spec.mounts
    )
    spec = dataclasses.replace(spec, mounts=mounts)
    out = gvisor_spec(spec, socket_dir=SOCKET_DIR, storage=DISK).to_json()
    hosts = next(m for m in out["mounts"] if m["destination"] == "/etc/hosts")
    assert hosts["source"] == str(DISK[1] / "etc/hosts")


def test_the_agent_is_told_of_the_launcher_when_the_preload_dir_has_one(tmp_path: Path) -> None:
    spec = make_spec(env=("PATH=/bin",))
    without = gvisor_spec(spec, socket_dir=SOCKET_DIR, storage=DISK, preload=tmp_path)
    assert not any("HUTCH_AGENT_LAUNCHER" in e for e in without.process.env)
    (tmp_path / "hutch-launch").write_bytes(b"")
    env = gvisor_spec(spec, socket_dir=SOCKET_DIR, storage=DISK, preload=tmp_path).process.env
    assert "HUTCH_AGENT_LAUNCHER=/.hutch/preload/hutch-launch" in env
    assert any(e.startswith("LD_PRELOAD=/.hutch/preload/") for e in env)
