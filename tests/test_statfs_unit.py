"""The pure parts of `df /` showing the disk limit: the seccomp profile that sends statfs to
the listener, and the struct statfs answered from a qgroup's limit and usage."""

from __future__ import annotations

from pathlib import Path

from hutch.runtime.container._seccomp import default_profile
from hutch.runtime.container._seccomp_notify import STATFS
from hutch.runtime.container._statfs_daemon import QGROUP_DIR_RE, quota, quota_statfs
from hutch.runtime.container._statfs_view import with_statfs_listener

MB = 1 << 20


def test_the_profile_notifies_statfs_and_allows_everything_else_as_before() -> None:
    base = default_profile((6, 1))
    profile = with_statfs_listener(base, Path("/h/statfs.sock"), Path("/sys/q"))
    assert base.allowed_names() - profile.allowed_names() == {"statfs", "fstatfs"}
    doc = profile.to_json()
    assert doc["listenerPath"] == "/h/statfs.sock" and doc["listenerMetadata"] == "/sys/q"
    notified = [r for r in doc["syscalls"] if r["action"] == "SCMP_ACT_NOTIFY"]
    assert notified == [{"names": ["statfs", "fstatfs"], "action": "SCMP_ACT_NOTIFY"}]
    # The plain profile has no listener at all (runc would refuse a start without one).
    assert "listenerPath" not in base.to_json()


def _real(blocks: int, free: int) -> list[int]:
    # f_type (overlay), bsize, blocks, bfree, bavail, files, ffree, fsid x2, namelen, frsize,
    # flags, spare x4
    return [0x794C7630, 4096, blocks, free, free, 0, 0, 1, 2, 255, 4096, 32, 0, 0, 0, 0]


def test_the_answer_is_the_quota_and_never_more_free_than_the_pool() -> None:
    pool = _real(blocks=8 << 18, free=6 << 18)  # 8 GiB pool, 6 GiB free
    fields = STATFS.unpack(quota_statfs(pool, 300 * MB, 100 * MB))
    assert fields[2] * 4096 == 300 * MB and fields[3] * 4096 == fields[4] * 4096 == 200 * MB
    assert fields[0] == 0x794C7630 and fields[9] == 255  # the rest is the real root's
    nearly_full_pool = _real(blocks=8 << 18, free=10)
    fields = STATFS.unpack(quota_statfs(nearly_full_pool, 300 * MB, 100 * MB))
    assert fields[3] == fields[4] == 10
    over = STATFS.unpack(quota_statfs(pool, 300 * MB, 400 * MB))  # usage past the limit
    assert over[3] == over[4] == 0


def test_quota_reads_the_qgroup_and_no_limit_means_let_it_through(tmp_path: Path) -> None:
    (tmp_path / "max_referenced").write_text("314572800\n")
    (tmp_path / "referenced").write_text("1000\n")
    (tmp_path / "rsv_data").write_text("24\n")
    assert quota(str(tmp_path)) == (314572800, 1024)
    (tmp_path / "max_referenced").write_text("0\n")
    assert quota(str(tmp_path)) is None


def test_only_a_qgroup_directory_is_taken_as_metadata() -> None:
    good = "/sys/fs/btrfs/08b0eb50-9252-404c-bad0-329dd0e66561/qgroups/0_257"
    assert QGROUP_DIR_RE.fullmatch(good)
    for bad in (good + "/../../..", "/etc", good.replace("0_257", "1_257"), ""):
        assert not QGROUP_DIR_RE.fullmatch(bad)
