"""The sandbox's OCI spec and seccomp profile, built without root: what a sandbox may do."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

import hutch.runtime
from hutch.runtime.container._agent_bundle import AgentBundle, agent_args
from hutch.runtime.container._host_files import RESOLV_MARKER, etc_hosts, resolv_conf
from hutch.runtime.container._nft import NetworkPolicy
from hutch.runtime.container._oci import (
    DEFAULT_CAPABILITIES,
    SandboxLayout,
    Spec,
    merge_env,
    resources,
    sandbox_spec,
)
from hutch.runtime.container._overlay import overlay_options
from hutch.runtime.container._runc import read_runc_error
from hutch.runtime.container._seccomp import (
    CLONE_NAMESPACE_FLAGS,
    CLONE_NEWUSER,
    DENIED_SYSCALLS,
    default_profile,
    kernel_version,
)

HOME = Path("/var/lib/hutch")
JSON = dict[str, Any]


def make_spec(**overrides: object) -> Spec:
    bundle = AgentBundle(runtime_dir=HOME / "agent/runtime-x", code_dir=HOME / "agent/code-y")
    etc = HOME / "storage/sb-1/etc"
    args: dict[str, object] = {
        "cgroups_path": "/hutch/sb-1",
        "hostname": "sandbox",
        "layout": SandboxLayout(
            rootfs=HOME / "sandboxes/sb-1/rootfs",
            etc_hosts=etc / "hosts",
            etc_hostname=etc / "hostname",
            etc_resolv_conf=etc / "resolv.conf",
            extra_mounts=bundle.mounts(),
        ),
        "args": agent_args((3, 11)),
        "env": ("PATH=/bin", "PYTHONHOME=/.hutch/python"),
        "resources": resources(cpu=1.5, memory_mb=512, swap_mb=256, pids=100),
        "seccomp": default_profile((6, 1)),
        "id_base": 1_000_000_000,
        "id_range": 65536,
        "nofile": 20000,
        "shm_bytes": 64 << 20,
    }
    args.update(overrides)
    return sandbox_spec(**args)  # type: ignore[arg-type]


@pytest.fixture()
def spec_json() -> JSON:
    # Through real JSON, as runc reads it.
    data: JSON = json.loads(make_spec().dumps())
    return data


def test_runtime_all_is_sorted_and_complete() -> None:
    names = hutch.runtime.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        assert hasattr(hutch.runtime, name), name
    for name in ("Runtime", "RuntimeConfig", "Limits", "SandboxSpec", "Image", "ImageStore"):
        assert name in names


def test_agent_command_is_the_hosts_python_through_its_own_loader() -> None:
    assert agent_args((3, 11)) == (
        "/.hutch/lib/ld-linux-x86-64.so.2",
        "--library-path",
        "/.hutch/python/lib:/.hutch/lib",
        "/.hutch/python/bin/python3.11",
        "-I",
        "-S",
        "-c",
        "import sys; sys.path.insert(0, '/.hutch/code'); "
        "from hutch.agent.__main__ import main; main()",
    )


def test_every_namespace_and_a_shifted_id_map(spec_json: JSON) -> None:
    linux = spec_json["linux"]
    assert {n["type"] for n in linux["namespaces"]} == {
        "pid", "ipc", "uts", "mount", "network", "cgroup", "user",
    }  # fmt: skip
    # No namespace joins a host one by path.
    assert all("path" not in n for n in linux["namespaces"])
    mapping = [{"containerID": 0, "hostID": 1_000_000_000, "size": 65536}]
    assert linux["uidMappings"] == mapping and linux["gidMappings"] == mapping
    assert linux["cgroupsPath"] == "/hutch/sb-1"


def test_process_runs_as_root_with_dockers_capabilities_minus_net_raw(spec_json: JSON) -> None:
    process = spec_json["process"]
    assert process["user"]["uid"] == 0 and process["user"]["gid"] == 0
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False
    caps = process["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert set(caps[kind]) == set(DEFAULT_CAPABILITIES)
    assert caps["inheritable"] == [] and caps["ambient"] == []
    granted = set(DEFAULT_CAPABILITIES)
    dangerous = {
        "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE",
        "CAP_SYS_MODULE", "CAP_DAC_READ_SEARCH", "CAP_SYS_RAWIO", "CAP_BPF",
    }  # fmt: skip
    assert not dangerous & granted
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000}]


def test_proc_and_sys_are_masked_and_read_only_as_in_docker(spec_json: JSON) -> None:
    linux = spec_json["linux"]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                 "/proc/scsi", "/proc/acpi", "/sys/firmware"):  # fmt: skip
        assert path in linux["maskedPaths"]
    assert set(linux["readonlyPaths"]) >= {
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
    }  # fmt: skip
    mounts = {m["destination"]: m for m in spec_json["mounts"]}
    assert "ro" in mounts["/sys"]["options"]
    assert "ro" in mounts["/sys/fs/cgroup"]["options"]


def test_devices_deny_all_but_the_minimal_set(spec_json: JSON) -> None:
    rules = spec_json["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "type": "a", "access": "rwm"}
    allowed = {(r["type"], r["major"], r.get("minor")) for r in rules[1:]}
    assert all(r["allow"] for r in rules[1:])
    assert allowed == {
        ("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9),
        ("c", 5, 0), ("c", 5, 2), ("c", 136, None),
    }  # fmt: skip
    assert "devices" not in spec_json["linux"]  # no device node beyond runc's defaults


def test_limits_become_cgroup_settings(spec_json: JSON) -> None:
    res = spec_json["linux"]["resources"]
    assert res["memory"] == {"limit": 512 << 20, "swap": (512 + 256) << 20}
    assert res["cpu"]["quota"] == 150_000 and res["cpu"]["period"] == 100_000
    assert res["pids"] == {"limit": 100}
    no_swap_accounting = resources(cpu=1, memory_mb=100, swap_mb=50, pids=10, memsw=False)
    assert no_swap_accounting.memory.swap == 0
    with pytest.raises(ValueError):
        resources(cpu=0, memory_mb=100, swap_mb=0, pids=10)
    with pytest.raises(ValueError):
        resources(cpu=1, memory_mb=100, swap_mb=-1, pids=10)


def test_mounts_agent_read_only_and_etc_files_from_the_sandboxes_storage(spec_json: JSON) -> None:
    mounts = {m["destination"]: m for m in spec_json["mounts"]}
    for dest, source in (
        ("/.hutch/python", HOME / "agent/runtime-x/python"),
        ("/.hutch/lib", HOME / "agent/runtime-x/lib"),
        ("/.hutch/code", HOME / "agent/code-y"),
    ):
        assert mounts[dest]["source"] == str(source)
        assert {"ro", "nosuid", "nodev"} <= set(mounts[dest]["options"])
    for name in ("hosts", "hostname", "resolv.conf"):
        assert mounts[f"/etc/{name}"]["source"] == str(HOME / f"storage/sb-1/etc/{name}")
    assert "size=67108864" in mounts["/dev/shm"]["options"]
    assert "/tmp" not in mounts  # on the writable layer, so the disk quota covers it
    # Nothing of the host's is bind-mounted except the agent's read-only bundle and etc files.
    binds = [m["source"] for m in spec_json["mounts"] if m["type"] == "bind"]
    assert all(s.startswith(str(HOME / "agent")) or "/storage/sb-1/etc/" in s for s in binds)
    assert spec_json["root"] == {"path": str(HOME / "sandboxes/sb-1/rootfs"), "readonly": False}
    assert spec_json["hostname"] == "sandbox"


def test_ping_group_range_stays_inside_the_mapped_ids(spec_json: JSON) -> None:
    # The kernel refuses groups that are not mapped in the user namespace.
    assert spec_json["linux"]["sysctl"]["net.ipv4.ping_group_range"] == "0 65535"


def test_env_layers_later_wins_and_bad_names_are_refused() -> None:
    env = merge_env(("PATH=/bin", "A=image"), {"A": "sandbox", "B": "x=y"}, ("PYTHONHOME=/p",))
    assert env == ("PATH=/bin", "A=sandbox", "B=x=y", "PYTHONHOME=/p")
    for bad in ({"": "x"}, {"A=B": "x"}, {"A": "nul\0"}):
        with pytest.raises(ValueError):
            merge_env(bad)


def seccomp_rules(kernel: tuple[int, int] = (6, 1)) -> list[JSON]:
    rules: list[JSON] = json.loads(json.dumps(default_profile(kernel).to_json()))["syscalls"]
    return rules


def test_seccomp_default_is_eperm_and_only_x86_64() -> None:
    profile = default_profile((6, 1)).to_json()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.EPERM
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"]
    allowed = default_profile((6, 1)).allowed_names()
    assert 280 <= len(allowed) <= 380
    for needed in ("read", "write", "execve", "openat", "mmap", "futex", "epoll_wait", "wait4",
                   "fork", "setuid", "chroot", "statx", "rseq"):  # fmt: skip
        assert needed in allowed


def test_seccomp_never_allows_the_dangerous_syscalls() -> None:
    allowed_anyhow = {
        name for rule in seccomp_rules() if rule["action"] == "SCMP_ACT_ALLOW"
        for name in rule["names"]
    }  # fmt: skip
    for name in DENIED_SYSCALLS:
        assert name not in allowed_anyhow, name
    for name in ("mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key",
                 "bpf", "perf_event_open", "kexec_load", "init_module", "finit_module",
                 "delete_module", "reboot", "swapon", "open_by_handle_at", "name_to_handle_at",
                 "pivot_root", "syslog", "acct", "settimeofday", "clock_settime", "userfaultfd",
                 "kcmp", "process_vm_readv", "process_vm_writev", "mount_setattr", "fsopen",
                 "fsmount", "move_mount", "open_tree", "iopl", "ioperm", "quotactl"):  # fmt: skip
        assert name in DENIED_SYSCALLS and name not in allowed_anyhow, name


def test_clone_may_not_make_namespaces_and_clone3_falls_back() -> None:
    rules = seccomp_rules()
    (clone,) = [r for r in rules if r["names"] == ["clone"]]
    (arg,) = clone["args"]
    assert arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["index"] == 0
    assert arg["value"] == CLONE_NAMESPACE_FLAGS and arg["valueTwo"] == 0
    assert CLONE_NAMESPACE_FLAGS & CLONE_NEWUSER
    (enosys,) = [r for r in rules if "clone3" in r["names"]]
    assert enosys["action"] == "SCMP_ACT_ERRNO" and enosys["errnoRet"] == errno.ENOSYS
    assert {"io_uring_setup", "io_uring_enter"} <= set(enosys["names"])
    (sock,) = [r for r in rules if r["names"] == ["socket"]]
    assert sock["args"] == [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]


def test_ptrace_only_where_seccomp_cannot_be_bypassed_with_it() -> None:
    def allows_ptrace(kernel: tuple[int, int]) -> bool:
        return any("ptrace" in r["names"] for r in seccomp_rules(kernel))

    assert allows_ptrace((4, 8)) and allows_ptrace((6, 18))
    assert not allows_ptrace((4, 4))
    assert kernel_version("6.18.44-fc-v769") == (6, 18)
    assert kernel_version("garbage") == (0, 0)


def test_overlay_refuses_paths_it_would_misparse() -> None:
    ok = overlay_options(lower=Path("/l"), upper=Path("/u"), work=Path("/w"))
    assert ok.startswith("lowerdir=/l,upperdir=/u,workdir=/w")
    with pytest.raises(ValueError):
        overlay_options(lower=Path("/a,b"), upper=Path("/u"), work=Path("/w"))
    with pytest.raises(ValueError):
        overlay_options(lower=Path("/a:b"), upper=Path("/u"), work=Path("/w"))


def test_resolv_conf_drops_loopback_resolvers() -> None:
    host = "search example.com\nnameserver 127.0.0.53\nnameserver 10.0.0.2\noptions edns0\n"
    assert resolv_conf(host) == (
        RESOLV_MARKER + "search example.com\nnameserver 10.0.0.2\noptions edns0\n"
    )
    only_loopback = resolv_conf("nameserver 127.0.0.53\n")
    assert "127.0.0.53" not in only_loopback and "nameserver 8.8.8.8" in only_loopback
    assert "127.0.1.1\tbox\n" in etc_hosts("box")


def test_runc_errors_are_read_from_its_json_log(tmp_path: Path) -> None:
    log = tmp_path / "runc.log"
    log.write_text(
        '{"level":"warning","msg":"unknown seccomp syscall","time":"t"}\n'
        '{"level":"error","msg":"runc run failed: unable to set memory limit","time":"t"}\n'
    )
    assert read_runc_error(log) == "runc run failed: unable to set memory limit"
    assert read_runc_error(tmp_path / "missing") == "(no runc log)"


def test_resolv_conf_without_egress_fails_lookups_at_once() -> None:
    # No egress: a local resolver where nothing listens (refused at once, no ICMP rate limit).
    none = resolv_conf("nameserver 10.0.0.2\n", NetworkPolicy.of("none"))
    assert "nameserver 127.0.0.1" in none and "10.0.0.2" not in none
    internet = resolv_conf("nameserver 10.0.0.2\n", NetworkPolicy.of("internet"))
    assert "nameserver 10.0.0.2" in internet
    allowed = resolv_conf("nameserver 10.0.0.2\n", NetworkPolicy.of("none", ["10.0.0.0/8"]))
    assert "nameserver 10.0.0.2" in allowed
