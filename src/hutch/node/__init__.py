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
    AgentUnknownOp,
    parse_result,
)
from hutch.node._disk_moves import DiskMoveFailed, pull, send_into
from hutch.node._egress import (
    EgressProxy,
    EgressRegistry,
    SealedSecrets,
    SecretOpener,
    agent_env,
    parse_upstreams,
    upstream_client,
)
from hutch.node._egress_grants import EgressGrants
from hutch.node._egress_rules import BASE_URL_ENVS, RULES_NAME, EgressRule, read_rules, seal_rules
from hutch.node._gateway import AgentGateway, AgentPaused, AgentUnreachable
from hutch.node._host import LocalHost, SandboxHost
from hutch.node._node_api import node_app
from hutch.node._pools import POOL_LIMITS, POOL_PREFIX, PoolLedger, WarmPools, parse_pool_sizes
from hutch.node._remote import NodeRefused, NodeUnavailable, RemoteHost
from hutch.node._tunnel import TunnelRefused, TunnelServer, open_tunnel

__all__ = [
    "BASE_URL_ENVS",
    "POOL_LIMITS",
    "POOL_PREFIX",
    "RULES_NAME",
    "AgentConnection",
    "AgentConnectionClosed",
    "AgentDisconnected",
    "AgentError",
    "AgentGateway",
    "AgentStream",
    "AgentUnknownOp",
    "AgentPaused",
    "AgentUnreachable",
    "DiskMoveFailed",
    "EgressGrants",
    "EgressProxy",
    "EgressRegistry",
    "EgressRule",
    "LocalHost",
    "NodeRefused",
    "NodeUnavailable",
    "PoolLedger",
    "RemoteHost",
    "SandboxHost",
    "SealedSecrets",
    "SecretOpener",
    "TunnelRefused",
    "TunnelServer",
    "WarmPools",
    "agent_env",
    "node_app",
    "open_tunnel",
    "parse_pool_sizes",
    "parse_result",
    "parse_upstreams",
    "pull",
    "read_rules",
    "seal_rules",
    "send_into",
    "upstream_client",
]
