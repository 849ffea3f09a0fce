"""``set_secrets``: environment variables the server hands over after connecting.

They are merged into the agent's base environment, so every process started after this sees
them; they live only in the agent's memory (the agent is non-dumpable), never on disk.
"""

from __future__ import annotations

from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_ops import SetSecretsResult

    from ._server import Agent


def set_secrets_op(agent: Agent, request: dict[str, Any]) -> SetSecretsResult:
    for field in request:
        if field not in ("op", "env"):
            raise InvalidRequest(field, "unknown field; set_secrets takes env")
    env = request.get("env")
    if not isinstance(env, dict):
        raise InvalidRequest("env", "must be an object of strings")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise InvalidRequest("env", "holds an invalid variable name")
        if not isinstance(value, str) or "\0" in value:
            # NB: never echo a value back: this answer may be logged.
            raise InvalidRequest(f"env.{name}", "must be a string without NUL characters")
    agent.base_env.update(env)
    return {"ok": True, "names": sorted(env)}
