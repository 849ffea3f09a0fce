"""Egress secrets on a cluster, as a replica sees them: the proxy that injects a sandbox's
keys runs on the node that holds it (node/_egress_grants.py). The replica stores the sealed
secrets as on one host; when the sandbox (re)starts it opens its rules and only the secrets
they name, and grants them to the node (over the node API, with the node token). The node
drops them at the sandbox's stop or destroy.
"""

from __future__ import annotations

from hutch.node import RULES_NAME, read_rules
from hutch.server.services._cluster_host import ClusterHost
from hutch.server.services._secrets import SecretBox
from hutch.server.store._sqlite import Store


class NodeEgress:
    """`EgressRegistry` through the sandbox's node."""

    def __init__(self, cluster: ClusterHost, store: Store, box: SecretBox) -> None:
        self._cluster = cluster
        self._store = store
        self._box = box

    async def register(self, sandbox_id: str, runtime_id: str) -> bool:
        sealed = self._store.get_secrets(sandbox_id)
        if RULES_NAME not in sealed:
            return False
        values = self._box.open_all(sealed)
        named = {rule.secret for rule in read_rules(values[RULES_NAME])}
        grant = {RULES_NAME: values[RULES_NAME], **{n: values[n] for n in named if n in values}}
        await self._cluster.grant_egress(sandbox_id, grant)
        return True

    def forget(self, sandbox_id: str) -> None:
        pass  # the node drops the grant itself when the sandbox stops or goes

    def port_for(self, sandbox_id: str) -> int | None:
        return self._cluster.egress_port(sandbox_id)
