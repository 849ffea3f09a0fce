"""The Hutch server: the HTTP API (the control plane) of one host, and `run`, which serves it.

It owns the app factory (`_app.py`), what routes depend on (`_deps.py`: `Services`, `Svc`,
`require_key`), the API's errors (`_errors.py`) and the one table that maps the agents' errors
to them (`_agent_errors.py`), the request models, `routes/`, `services/` and `store/`. It may
import `hutch.node` (the host: agent gateway, pools, egress), `hutch.proxy` (the preview data
plane, which shares its port), `hutch.runtime` and `hutch._wire`; nothing imports it but the
CLI's `hutch serve` and `hutch.e2b` (E2B's API over the same services, through the public names
of `routes` and `store`). The name stays `server` (not `api`): it is what `hutch serve` runs and
what the `hutch[server]` extra installs. See docs/architecture.md.
"""

from hutch.server._app import create_app
from hutch.server._config import ServerConfig
from hutch.server._node_daemon import NodeConfig, run_node
from hutch.server._node_daemon import remove_all as remove_node_sandboxes
from hutch.server._run import run

__all__ = [
    "NodeConfig",
    "ServerConfig",
    "create_app",
    "remove_node_sandboxes",
    "run",
    "run_node",
]
