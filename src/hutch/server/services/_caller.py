"""Who is asking: the caller of a request (key id, team, role) and what it may see.

Every resource belongs to a team. A `member` key sees its own team's resources only; anything
else answers exactly as if it did not exist. An `admin` key (the first key made at start-up,
the static key from the config, and keys an admin makes with role admin) manages keys, teams,
quotas and shared images, and sees every team.

The caller is set once per request by the auth dependency (`hutch.server._deps.require_key`)
in a context variable, so that the services that resolve an id (`SandboxManager.get`,
`Lifecycle.get_snapshot`, the image routes) check ownership in one place each, and every
resource made during the request is stamped with the caller's team. Outside a request (the
reconciler, recovery, the preview proxy) there is no caller and nothing is filtered.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from hutch.server._errors import Forbidden
from hutch.server.store._teams import DEFAULT_TEAM

Role = Literal["admin", "member"]


@dataclass(frozen=True)
class Caller:
    """The key behind a request: its id, its team and its role."""

    key_id: str
    team: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def sees(self, team: str) -> bool:
        return self.is_admin or team == self.team


CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("hutch_caller", default=None)


def current_team() -> str:
    """The team new resources of this request belong to (`default` outside a request)."""
    caller = CURRENT_CALLER.get()
    return caller.team if caller is not None else DEFAULT_TEAM


def visible(team: str) -> bool:
    """Whether this request's caller may see a resource of `team` (True outside a request)."""
    caller = CURRENT_CALLER.get()
    return caller is None or caller.sees(team)


def require_admin(caller: Caller, what: str) -> None:
    if not caller.is_admin:
        raise Forbidden(
            f"{what} needs an admin key; this key is a member of team {caller.team!r} "
            "(ask an admin: `hutch keys create --team NAME --role admin`)"
        )
