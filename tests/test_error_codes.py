"""Error codes: one list (hutch._wire.errors) behind the server, the SDK and docs/api.md."""

from __future__ import annotations

import re
from pathlib import Path

import hutch.server._errors as server_errors
from hutch._wire.errors import ERRORS, STATUS_OF
from hutch.sdk._exceptions import ERROR_CODES, APIError, api_error

ROOT = Path(__file__).resolve().parent.parent
# Sent in a terminal WebSocket's error message, never as an HTTP error; and the agent client's
# own code for a lost connection, which leaves the server as sandbox_unavailable.
NOT_HTTP = {"invalid_message", "connection_closed"}


def documented_codes() -> dict[str, int]:
    """code -> status from every `| status | code | when |` table in docs/api.md."""
    documented: dict[str, int] = {}
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"\d{3}", cells[0]):
            for code in re.findall(r"`([a-z_]+)`", cells[1]):
                assert code not in documented, f"{code} is documented twice"
                documented[code] = int(cells[0])
    return documented


def test_the_list_has_each_code_once() -> None:
    codes = [error.code for error in ERRORS]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"[a-z][a-z_]*", c) for c in codes)
    assert all(400 <= error.status <= 599 and error.when for error in ERRORS)


def test_docs_api_md_tables_match_the_list() -> None:
    documented = documented_codes()
    listed = dict(STATUS_OF)
    assert sorted(set(listed) - set(documented)) == [], "codes missing from docs/api.md"
    assert sorted(set(documented) - set(listed)) == [], "docs/api.md codes not in the list"
    wrong = {c: (documented[c], listed[c]) for c in listed if documented[c] != listed[c]}
    assert wrong == {}, "status in docs/api.md vs the list"


def test_server_errors_take_their_status_from_the_list() -> None:
    classes = [
        cls
        for cls in vars(server_errors).values()
        if isinstance(cls, type) and issubclass(cls, server_errors.ApiError)
    ]
    assert len(classes) > 20
    for cls in classes:
        assert cls.code in STATUS_OF, cls
        if "code" in vars(cls):
            assert cls.status == STATUS_OF[cls.code], cls


def test_codes_written_in_the_server_are_listed() -> None:
    literal = re.compile(r"""code=["']([a-z_]+)["']|"code": "([a-z_]+)"|^\s+code = "([a-z_]+)"$""")
    found: set[str] = set()
    for path in (ROOT / "src" / "hutch" / "server").rglob("*.py"):
        for line in path.read_text().splitlines():
            for match in literal.finditer(line):
                found.add(next(g for g in match.groups() if g))
    assert len(found) > 20
    assert sorted(found - set(STATUS_OF) - NOT_HTTP) == []


def test_sdk_maps_every_listed_code_with_its_status() -> None:
    assert set(ERROR_CODES) == set(STATUS_OF)
    for error in ERRORS:
        cls, status = ERROR_CODES[error.code]
        assert status == error.status
        raised = api_error(error.code, "m")
        assert isinstance(raised, cls) and isinstance(raised, APIError)
        assert raised.status == error.status and raised.code == error.code
