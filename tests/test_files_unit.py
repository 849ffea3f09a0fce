"""Sans-I/O parts of the file API: path rules, git URL rules, git error classification."""

from __future__ import annotations

import pytest

from hutch.server._errors import InvalidRequest
from hutch.server.routes._files import check_path, git_error, git_url


def test_check_path() -> None:
    assert check_path("a/b.txt") == "a/b.txt"
    assert check_path("x" * 4096) == "x" * 4096
    for bad in ("", "a\0b", "x" * 4097, "é" * 2049):
        with pytest.raises(InvalidRequest) as e:
            check_path(bad)
        assert e.value.code == "invalid_path" and e.value.status == 422


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/a/b.git",
        "http://127.0.0.1:8000/r.git",
        "git://host/r.git",
        "ssh://git@host/r.git",
        "git@github.com:a/b.git",
        "file:///srv/r.git",
        "/srv/r.git",
        "../r.git",
    ],
)
def test_git_url_accepts(url: str) -> None:
    assert git_url(url) == url


@pytest.mark.parametrize(
    "url", ["ext::sh -c id", "fd::3", "-uhack", "--upload-pack=x", "ftp://h/r", "a\nb", ""]
)
def test_git_url_refuses(url: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        git_url(url)
    assert e.value.code == "invalid_git_url"


@pytest.mark.parametrize(
    ("stderr", "code", "status"),
    [
        (
            "warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope "
            "not found in upstream origin",
            "git_branch_not_found",
            404,
        ),
        (
            "fatal: could not read Username for 'https://h': terminal prompts disabled",
            "git_auth_failed",
            403,
        ),
        ("fatal: Authentication failed for 'https://h/r.git/'", "git_auth_failed", 403),
        ("fatal: unable to access 'http://x/': Could not resolve host: x", "git_unreachable", 502),
        (
            "fatal: unable to connect to 127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection "
            "refused",
            "git_unreachable",
            502,
        ),
        (
            "fatal: remote error: access denied or repository not exported: /m.git",
            "git_repository_not_found",
            404,
        ),
        (
            "fatal: destination path 'r' already exists and is not an empty directory.",
            "file_exists",
            409,
        ),
        ("fatal: something else", "git_failed", 422),
    ],
)
def test_git_error_classification(stderr: str, code: str, status: int) -> None:
    error = git_error(stderr)
    assert (error.code, error.status) == (code, status)
    assert "git" in error.message


def test_entries_batch_splices_only_valid_listings() -> None:
    from hutch.node._agent_client import AgentError
    from hutch.server.routes._files import entries_batch

    assert entries_batch(b'[{"name":"a"},{"name":"b"}]') == b'{"name":"a"},{"name":"b"}'
    assert entries_batch(b"[]") == b""
    for bad in (b'[{"a":1}]],[{"b":2}', b'{"a":1}', b"[1]", b'[{"a":NaN}]', b"\xff"):
        with pytest.raises(AgentError):
            entries_batch(bad)
