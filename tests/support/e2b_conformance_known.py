"""What scripts/e2b-conformance leaves out of E2B's suites, and the known causes of the failures
that remain: each entry says why, so a new failure (not matched here) stands out in the report.

Patterns are substrings of a test's id (``path::name`` as pytest and vitest's junit name them).
"""

from __future__ import annotations

# Never run: they reach off this machine, or need E2B's cloud (template builds, volumes' cloud).
DESELECT: dict[str, list[tuple[str, str]]] = {
    "python": [
        ("tests/sync/sandbox_sync/test_internet_access.py", "curls connectivitycheck.gstatic.com"),
        (
            "tests/async/sandbox_async/test_internet_access.py",
            "curls connectivitycheck.gstatic.com",
        ),
        ("tests/sync/sandbox_sync/test_network.py", "egress rules tested against internet hosts"),
        ("tests/async/sandbox_async/test_network.py", "egress rules tested against internet hosts"),
        ("tests/sync/template_sync/test_build.py", "E2B's template-build service"),
        ("tests/async/template_async/test_build.py", "E2B's template-build service"),
        ("tests/sync/template_sync/test_background_build.py", "E2B's template-build service"),
        ("tests/async/template_async/test_background_build.py", "E2B's template-build service"),
        ("tests/sync/template_sync/test_tags.py::TestTagsIntegration", "builds templates"),
        ("tests/async/template_async/test_tags.py::TestTagsIntegration", "builds templates"),
        ("tests/sync/template_sync/methods/test_make_symlink.py", "E2B's template-build service"),
        ("tests/async/template_async/methods/test_make_symlink.py", "E2B's template-build service"),
        ("tests/sync/template_sync/methods/test_run_cmd.py", "E2B's template-build service"),
        ("tests/async/template_async/methods/test_run_cmd.py", "E2B's template-build service"),
    ],
    "ci": [],
    "js": [
        ("tests/sandbox/internetAccess.test.ts", "curls internet hosts"),
        ("tests/sandbox/network.test.ts", "egress rules tested against internet hosts"),
        ("tests/bundle/edgeCompat.test.ts", "bundles the SDK for edge runtimes (build tooling)"),
        ("tests/template/", "E2B's template-build service"),
        ("tests/runtimes/", "browsers, Deno, Bun, Cloudflare workers"),
        ("tests/connectionConfig.browser.test.ts", "a browser runtime"),
    ],
}

# cause -> (counted: does such a failure count against Hutch?, what it is)
CAUSES: dict[str, tuple[bool, str]] = {
    "env": (
        False,
        "a mocked test that asserts E2B's cloud defaults (api.e2b.app, sandbox.e2b.app) or its "
        "own fake server, and fails only because E2B_API_URL/E2B_SANDBOX_URL point at Hutch",
    ),
    "sdk": (
        False,
        "the test was written for the SDK at the suite's commit and checks internals or "
        "behaviour that the pinned SDK release changed (runs with --sdk pinned only)",
    ),
    "limit": (True, "a documented difference of Hutch (docs/e2b.md, 'Not there yet')"),
    "private": (
        True,
        "E2B's default is public traffic; Hutch's get_host needs the traffic token unless "
        "allow_public_traffic=True (deliberate), and the test uses https:// on *.localhost",
    ),
    "template": (
        False,
        "needs what is inside E2B's code-interpreter template, not the API: R and Java "
        "kernels (Hutch answers language_unavailable), Jupyter run by systemd",
    ),
    "flaky": (True, "passes alone; failed under this machine's load"),
}

# (suite, pattern, cause, detail)
KNOWN: list[tuple[str, str, str, str]] = [
    (
        "python",
        "test_env_vars.py::test_bash_command_scoped_env_vars",
        "limit",
        "sudo: no_new_privs",
    ),
    (
        "python",
        "files/test_info.py::test_get_info_of_directory",
        "limit",
        "directory size 0 (btrfs)",
    ),
    ("python", "test_auto_pause_filesystem_only_reboots", "limit", "boot_id is the host's"),
    ("python", "test_snapshot_filesystem_only.py::test_pause_filesystem_only", "limit", "boot_id"),
    ("python", "test_auto_resume_wakes_on_http_request", "private", "plain GET, no token"),
    ("python", "test_host.py::test_ping_server", "private", "plain GET, no token"),
    ("python", "test_config_propagation.py::test_connect_sets_stable_host", "env", ""),
    ("python", "test_connection_config.py::test_validate_api_key", "env", ""),
    ("python", "test_connection_config.py::test_sandbox_url_", "env", ""),
    ("python", "test_connection_config.py::test_sandbox_direct_url_", "env", ""),
    ("python", "test_sandbox_urls.py::test_file_urls_use_direct_sandbox_host", "env", ""),
    ("python", "shared/sandbox/test_lifecycle_request.py::", "sdk", "mocks POST /sandboxes"),
    ("python", "tests/test_client.py::", "sdk", "its fake API serves POST /sandboxes"),
    ("python", "test_connect.py::test_connect_normalizes_unset_tokens", "sdk", "mocks v1 connect"),
    ("python", "files/test_info.py::test_file_symlink", "sdk", "2.63 reports a link as symlink"),
    ("python", "test_envd_rpc_exception.py::test_", "sdk", "2.63 wraps a failed health probe"),
    ("python", "template_sync/test_stacktrace.py::", "sdk", "mocks 2.45's request_build"),
    ("python", "template_async/test_stacktrace.py::", "sdk", "mocks 2.45's request_build"),
    ("python", "utils/test_get_all_files_in_path.py::", "sdk", "2.63 lists ignored dirs"),
    # Polled once right after the write: the WRITE event had not reached the server yet. Seen
    # only with two suites running at once (not in 10 runs of test_watch.py with 3 busy loops).
    ("python", "files/test_watch.py::test_watch_iterated", "flaky", "WRITE event late"),
    ("python", "files/test_watch.py::test_watch_recursive_directory_changes", "flaky", "late"),
    ("python", "tests/test_api_client_transport.py", "sdk", "imports 2.45's internals"),
    ("python", "tests/test_validate_api_key.py", "sdk", "imports 2.45's internals"),
    ("ci", "systemd.py::", "template", "Jupyter under systemd, curl to 0.0.0.0:49999"),
    ("ci", "test_images.py::test_get_image_on_save", "limit", "PIL's save is not displayed"),
    ("ci", "env_vars/test_r.py::", "template", "R kernel"),
    ("ci", "env_vars/test_java.py::", "template", "Java kernel"),
    ("ci", "::test_cwd_r", "template", "R kernel"),
    ("ci", "::test_cwd_java", "template", "Java kernel"),
    ("ci", "::test_r_kernel", "template", "R kernel"),
    ("ci", "::test_java_kernel", "template", "Java kernel"),
    # JS: mocked with msw for api.e2b.app; with E2B_API_URL at Hutch msw refuses the request.
    ("js", "tests/volume/", "env", ""),
    ("js", "tests/secret/", "env", ""),
    ("js", "tests/sandbox/egressProxy.test.ts::", "env", ""),
    ("js", "tests/sandbox/iam.test.ts::", "env", ""),
    ("js", "tests/sandbox/lifecycleRequest.test.ts::", "env", ""),
    ("js", "tests/sandbox/networkTransform.test.ts::", "env", ""),
    ("js", "tests/sandbox/urls.test.ts::sandbox file URLs > file URLs use direct", "env", ""),
    ("js", "envVars.test.ts::bash command scoped env vars", "limit", "sudo: no_new_privs"),
    ("js", "files/info.test.ts::get info of a directory", "limit", "directory size 0 (btrfs)"),
    ("js", "::filesystem-only", "limit", "boot_id is the host's"),
    ("js", "host.test.ts::ping server", "private", "plain fetch, no token"),
    ("js", "::auto-resume wakes paused sandbox on http request", "private", "plain fetch"),
    ("js", "snapshot.test.ts::pause and resume a sandbox with http server", "private", ""),
]


def cause_of(suite: str, test_id: str) -> tuple[str, str] | None:
    for known_suite, pattern, cause, detail in KNOWN:
        if known_suite == suite and pattern in test_id:
            return cause, detail
    return None
