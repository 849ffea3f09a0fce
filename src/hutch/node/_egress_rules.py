"""An egress rule as the egress proxy reads it back from a sandbox's sealed secrets.

The API validates rules (`EgressSecret` in hutch.server's models) and seals them as JSON; the
node only reads them, so it keeps its own plain type and does not depend on the API's models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The sealed row that keeps a sandbox's rules, next to its secrets (not an env name: it can
# never collide with one, and it is never sent to the agent).
RULES_NAME = "hutch:egress"
# The base-URL variable a CLI reads, for the model hosts we know.
BASE_URL_ENVS = {"api.anthropic.com": "ANTHROPIC_BASE_URL", "api.openai.com": "OPENAI_BASE_URL"}


@dataclass(frozen=True)
class EgressRule:
    host: str
    header: str
    secret: str
    prefix: str = ""
    base_url_env: str | None = None

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> EgressRule:
        return cls(
            host=str(fields["host"]),
            header=str(fields["header"]),
            secret=str(fields["secret"]),
            prefix=str(fields.get("prefix") or ""),
            base_url_env=fields.get("base_url_env"),
        )

    def url_env(self) -> str | None:
        return self.base_url_env or BASE_URL_ENVS.get(self.host)


def seal_rules(rules: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The extra entry stored (encrypted) with the sandbox's secrets; {} without rules."""
    listed = [dict(r) for r in rules]
    if not listed:
        return {}
    return {RULES_NAME: json.dumps(listed)}


def read_rules(raw: str) -> list[EgressRule]:
    return [EgressRule.of(r) for r in json.loads(raw)]
