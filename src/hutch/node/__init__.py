"""What runs on one host, next to the sandboxes: the connections to their agents, the warm
pools of started sandboxes, and the egress proxy that injects keys the sandboxes never see.

It may import `hutch.runtime` and `hutch._wire`, never `hutch.server` (the API reaches a
host through this package; a host knows nothing of routes, keys or the store's schema).
"""

from hutch.node._agent_client import (
    AgentConnection,
    AgentConnectionClosed,
    AgentDisconnected,
    AgentError,
    AgentStream,
    parse_result,
)
from hutch.node._egress import (
    EgressProxy,
    SealedSecrets,
    SecretOpener,
    agent_env,
    parse_upstreams,
    upstream_client,
)
from hutch.node._egress_rules import BASE_URL_ENVS, RULES_NAME, EgressRule, seal_rules
from hutch.node._gateway import AgentGateway, AgentUnreachable
from hutch.node._host import LocalHost, SandboxHost
from hutch.node._pools import POOL_PREFIX, WarmPools, parse_pool_sizes

__all__ = [
    "BASE_URL_ENVS",
    "POOL_PREFIX",
    "RULES_NAME",
    "AgentConnection",
    "AgentConnectionClosed",
    "AgentDisconnected",
    "AgentError",
    "AgentGateway",
    "AgentStream",
    "AgentUnreachable",
    "EgressProxy",
    "EgressRule",
    "LocalHost",
    "SandboxHost",
    "SealedSecrets",
    "SecretOpener",
    "WarmPools",
    "agent_env",
    "parse_pool_sizes",
    "parse_result",
    "parse_upstreams",
    "seal_rules",
    "upstream_client",
]
