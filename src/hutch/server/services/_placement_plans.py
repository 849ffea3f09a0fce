"""A create's placement read ahead of its node call (`ClusterHost.prepare_create`).

A cold create through a replica inserts the sandbox's row, then places it: placement reads
the nodes and what is placed on them, records its choice and calls the node. The read leaves
the sandbox being created out, so it does not need the row: it is made beside the insert
(one round trip at once, not one after the other) and kept here until the create's
`ClusterHost.create` takes it.

A plan stands in for the read only as fresh as a read made in `create` would be for what
this replica decides: `create` records its choice under a lock so that creates made at once
(a fork's) each count those placed before; a plan read before any placement this replica
recorded since is read again, as is one older than PLAN_FOR or for another need.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from hutch.server.services._placement import Need
from hutch.server.services._pool_claims import placement_order
from hutch.server.store._nodes import NodeRecord
from hutch.server.store._off_loop import off_loop
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

# A plan older than this is read again (a create's insert takes milliseconds).
PLAN_FOR = 1.0  # seconds
# Plans kept: those of creates whose insert failed are never taken.
KEPT = 256

Order = tuple[list[str], dict[str, NodeRecord]]


@dataclass(frozen=True)
class _Plan:
    at: float  # time.monotonic() of the read's start
    made: int  # placements this replica had recorded before the read
    need: Need
    order: Order


class PlacementPlans:
    def __init__(self) -> None:
        self._plans: dict[str, _Plan] = {}
        self._made = 0

    async def read_ahead(self, store: Store, sandbox_id: str, need: Need, fresh_for: float) -> None:
        """Placement's read for `sandbox_id`, kept for its create's `order`. Never raises: a failed
        read is made again by the create."""
        at, made = time.monotonic(), self._made
        try:
            order = await off_loop(
                store, placement_order, store, need, but=sandbox_id, fresh_for=fresh_for
            )
        except Exception as exc:
            log.warning("placement read for %s failed (read again): %s", sandbox_id, exc)
            return
        if len(self._plans) >= KEPT:
            self._plans = {k: p for k, p in self._plans.items() if at - p.at < PLAN_FOR}
        self._plans[sandbox_id] = _Plan(at, made, need, order)

    async def order(self, store: Store, sandbox_id: str, need: Need, fresh_for: float) -> Order:
        """The plan read for `sandbox_id` if it stands in for a read now, else a read."""
        plan = self._plans.pop(sandbox_id, None)
        if plan is not None and plan.made == self._made and plan.need == need:
            if time.monotonic() - plan.at <= PLAN_FOR:
                return plan.order
        return await off_loop(
            store, placement_order, store, need, but=sandbox_id, fresh_for=fresh_for
        )

    def placed(self) -> None:
        """This replica recorded a placement: plans read before it are read again."""
        self._made += 1
