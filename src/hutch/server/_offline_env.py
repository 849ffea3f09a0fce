"""Package managers give up at once in a sandbox without network, instead of retrying.

With ``network="none"`` a name lookup fails in milliseconds (runtime: resolv.conf points at a
closed port), but pip then retries five times with back-off (~8 s) before "No matching
distribution", and npm waits out its fetch retries (10 s and more): a user or an agent only
learns after a long pause what was clear at once. So a sandbox with no egress at all gets
these variables, unless its own env sets them; they are taken back when its network is opened
(``PUT .../network``) and given again when it is closed.
"""

from __future__ import annotations

from collections.abc import Mapping

from hutch.runtime import NetworkPolicy

NO_RETRY_ENV: dict[str, str] = {
    # NB: 1, not 0: pip names the cause ("Temporary failure in name resolution") only in the
    # warning of a retry, and urllib3 does not back off before the first one: one retry costs
    # a failed lookup (well under a millisecond) and keeps the message.
    "PIP_RETRIES": "1",
    "npm_config_fetch_retries": "0",  # npm prints the cause itself: "EAI_AGAIN"
}


def has_no_egress(policy: NetworkPolicy) -> bool:
    return not policy.internet and not policy.allow


def offline_env(policy: NetworkPolicy, user_env: Mapping[str, str]) -> dict[str, str]:
    """The variables a sandbox with this policy starts with, below its own ``env``."""
    if not has_no_egress(policy):
        return {}
    return {k: v for k, v in NO_RETRY_ENV.items() if k not in user_env}


def offline_env_change(policy: NetworkPolicy, user_env: Mapping[str, str]) -> dict[str, str | None]:
    """What the agent's ``set_env`` must change after the policy became ``policy``: the
    variables set (no egress) or unset (``None``), never one the sandbox's own env sets."""
    offline = has_no_egress(policy)
    return {k: (v if offline else None) for k, v in NO_RETRY_ENV.items() if k not in user_env}
