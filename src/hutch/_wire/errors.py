"""The API's error codes: the one list every error response's ``code`` comes from.

The server's errors take their HTTP status from it (`hutch.server._errors`), the SDK maps each
code to an exception class with it (`hutch.sdk._exceptions.ERROR_CODES`), and the tables in
docs/api.md say the same (tests/test_error_codes.py fails when they disagree). A new code is
added here first. Stdlib only, like the rest of `_wire`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    """One stable error code, the HTTP status it is sent with, and when."""

    code: str
    status: int
    when: str


ERRORS: tuple[ErrorCode, ...] = (
    ErrorCode("unauthorized", 401, "missing or wrong API key"),
    ErrorCode("sandbox_not_found", 404, "unknown sandbox id"),
    ErrorCode("image_not_found", 404, "unknown image"),
    ErrorCode("key_not_found", 404, "unknown API key id"),
    ErrorCode("not_found", 404, "unknown route"),
    ErrorCode("terminal_not_found", 404, "unknown terminal id"),
    ErrorCode("port_not_exposed", 404, "unexpose of a port that is not exposed"),
    ErrorCode("invalid_port", 422, "expose of a port outside 1-65535, or reserved"),
    ErrorCode("sandbox_not_running", 409, "sandbox exists but is not running"),
    ErrorCode("context_not_found", 404, "unknown code context id (in this sandbox)"),
    ErrorCode("context_dead", 409, "the context's interpreter died; restart it"),
    ErrorCode("context_failed", 409, "the interpreter did not start in this sandbox"),
    ErrorCode("unknown_language", 422, "not python, javascript, typescript or bash"),
    ErrorCode("language_unavailable", 422, "the image lacks the interpreter"),
    ErrorCode("runtime_unsupported", 422, "the sandbox's runtime cannot do this"),
    ErrorCode("process_not_found", 404, "unknown background process id"),
    ErrorCode("process_exists", 409, "start with the id of a process that still runs"),
    ErrorCode("process_not_running", 409, "stdin or a signal for a process that ended"),
    ErrorCode("invalid_signal", 422, "an unknown signal; the message names the valid ones"),
    ErrorCode("session_not_found", 404, "unknown session id"),
    ErrorCode("session_exists", 409, "create with the id of an existing session"),
    ErrorCode("bucket_mount_failed", 400, "the bucket could not be reached; nothing mounted"),
    ErrorCode("bucket_not_mounted", 404, "unmount of a path where no bucket is mounted"),
    ErrorCode("mount_path_busy", 409, "mount at a path that already is (or is in) a mount"),
    ErrorCode("sandbox_exists", 409, "create with an id that is taken (POST)"),
    ErrorCode("image_in_use", 409, "removing an image's last name while sandboxes use it"),
    ErrorCode("body_too_large", 413, "request body over the configured limit"),
    ErrorCode("upgrade_required", 426, "plain HTTP to a WebSocket route"),
    ErrorCode("invalid_request", 422, "malformed body or parameters; see `fields`"),
    ErrorCode("invalid_sandbox_id", 422, "id not 1-63 chars of [a-z0-9-]"),
    ErrorCode("invalid_size", 422, "a terminal size outside 1-1000"),
    ErrorCode("image_invalid", 422, "corrupt, truncated or unsafe image archive or layer"),
    ErrorCode("image_architecture", 422, "the image is for another CPU architecture or OS"),
    ErrorCode("image_build_failed", 422, "a build step failed (`output_tail` has its output)"),
    ErrorCode("build_context_invalid", 422, "a build context that is not a plain tar"),
    ErrorCode("image_has_no_entrypoint", 422, "start_entrypoint with no ENTRYPOINT nor CMD"),
    ErrorCode("invalid_ca_certificate", 422, "ca_certificates holds anything but PEM certificates"),
    ErrorCode("network_name_unresolved", 422, "a host name in network_allow does not resolve"),
    ErrorCode("entrypoint_failed", 422, "the image's ENTRYPOINT+CMD could not start"),
    ErrorCode("internal", 500, "a bug; never expected"),
    ErrorCode("sandbox_start_failed", 503, "the host could not start the sandbox now; retry"),
    ErrorCode("registry_error", 502, "the registry refused or could not be reached"),
    ErrorCode("sandbox_unavailable", 503, "the agent did not answer"),
    ErrorCode("node_unavailable", 503, "the node that holds the sandbox does not answer"),
    ErrorCode("no_capacity", 503, "no node has room for the sandbox now"),
    ErrorCode("create_busy", 503, "too many sandboxes starting; retry after Retry-After"),
    ErrorCode("node_not_found", 404, "unknown node name"),
    ErrorCode("not_on_nodes", 501, "what a cluster node does not serve (egress without a proxy)"),
    ErrorCode("shutting_down", 503, "the sandbox's agent is stopping"),
    ErrorCode("bad_response", 422, "the sandbox's agent ended a file stream early"),
    # Lifecycle (docs/api.md, "Lifecycle").
    ErrorCode("invalid_state", 409, "an operation the sandbox's state does not allow"),
    ErrorCode("snapshot_not_found", 404, "unknown snapshot (or another key's)"),
    ErrorCode("snapshot_exists", 409, "a snapshot name that is taken"),
    ErrorCode("backup_target_unreachable", 400, "the backup bucket could not be reached"),
    ErrorCode("backup_not_found", 404, "no backup of that name in the bucket"),
    ErrorCode("backup_failed", 502, "the backup or restore stream failed midway"),
    # Files (docs/api.md, "Files"); the agent finds most of these.
    ErrorCode("file_not_found", 404, "no such file or directory"),
    ErrorCode("is_a_directory", 409, "a directory where a file is expected"),
    ErrorCode("not_a_directory", 409, "a file where a directory is expected"),
    ErrorCode("file_exists", 409, "mkdir of an existing path"),
    ErrorCode("directory_not_empty", 409, "remove of a directory without recursive"),
    ErrorCode("not_a_regular_file", 409, "read or write of a FIFO, device or socket"),
    ErrorCode("read_only", 409, "under a read-only mount"),
    ErrorCode("busy", 409, "the file is busy (e.g. a running executable)"),
    ErrorCode("permission_denied", 403, "the filesystem refused"),
    ErrorCode("no_space", 507, "the sandbox's disk quota is full"),
    ErrorCode("insufficient_storage", 507, "the server's own disk (its home) is full"),
    ErrorCode("cwd_not_found", 422, "exec, process or terminal: the working directory is missing"),
    ErrorCode("user_not_found", 422, "exec or process: no such user or group in the image"),
    ErrorCode("invalid_path", 422, "empty, NUL, or longer than 4096 bytes"),
    ErrorCode("too_many_links", 422, "too many levels of symbolic links"),
    ErrorCode("io_error", 422, "the filesystem reported an I/O error"),
    ErrorCode("git_branch_not_found", 404, "git_checkout: no such branch"),
    ErrorCode("git_repository_not_found", 404, "git_checkout: no such repository"),
    ErrorCode("git_auth_failed", 403, "git_checkout: the git server refused the credentials"),
    ErrorCode("git_unreachable", 502, "git_checkout: the git host could not be reached"),
    ErrorCode("git_failed", 422, "git_checkout: git failed otherwise"),
    ErrorCode("git_not_installed", 422, "git_checkout: the image has no git"),
    ErrorCode("invalid_git_url", 422, "git_checkout: not a URL git can clone"),
    # Teams, keys and quotas (docs/api.md, "Teams, keys and quotas").
    ErrorCode("forbidden", 403, "a member key asking for what only an admin key may do"),
    ErrorCode("team_not_found", 404, "unknown team name"),
    ErrorCode("team_exists", 409, "create of a team whose name is taken"),
    ErrorCode("team_not_empty", 409, "delete of a team that still owns sandboxes or snapshots"),
    ErrorCode("image_name_taken", 409, "an image name another team owns"),
    ErrorCode("quota_exceeded", 429, "over a team quota; the message names the limit and use"),
    ErrorCode("rate_limited", 429, "too many requests for this key; wait Retry-After seconds"),
    ErrorCode("cpu_above_host", 422, "more cpu than the host has cores"),
)

STATUS_OF: Mapping[str, int] = {error.code: error.status for error in ERRORS}
