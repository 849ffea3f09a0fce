"""Schemathesis hooks for tests/test_fuzz_api.py (loaded through SCHEMATHESIS_HOOKS).

The fuzzer's key acts for the team `default`; schemathesis learns that name from responses
(`GET /v1/teams`) and then sets quotas on it: max_running 0 or a tiny max_snapshots, after
which every create, fork and snapshot of the run answered 429 `quota_exceeded` and the code
behind them went untested, a different part in each run depending on timing. Requests that
would change the fuzzer's own team go to a team that does not exist instead: the request's
body is still validated (422s) and the route still answers (404), and the quota routes are
fuzzed fully on the teams the run itself creates.
"""

from __future__ import annotations

from typing import Any

import schemathesis

OWN_TEAM = "default"
ELSEWHERE = "fuzz-not-its-own-team"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    del context, kwargs
    if case.path_parameters.get("team") == OWN_TEAM and case.method.upper() != "GET":
        case.path_parameters["team"] = ELSEWHERE
