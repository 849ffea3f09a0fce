"""``set_env``: the environment every later exec, session and terminal starts from.

A warm-pool sandbox is started before its user is known; the server applies the user's env
with this op when it hands the sandbox out (DESIGN.md: warm pools)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._ops import OpError

if TYPE_CHECKING:
    from ._server import Agent


def set_env_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    env = request.get("env")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    ):
        raise OpError("invalid_request", "'env' must be an object of NAME: value strings")
    agent.base_env.update(env)
    return {"ok": True}
