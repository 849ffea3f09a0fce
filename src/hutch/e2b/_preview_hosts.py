"""`sbx.get_host(port)`: E2B's `{port}-{sandboxID}.{domain}` hosts on Hutch's preview proxy.

The domain in E2B's answers is Hutch's preview domain and port, so the SDK's host is a
preview host without a token in its name; the request carries the sandbox's traffic token
in `e2b-traffic-access-token` instead, and every port of the sandbox is reached with it
(E2B exposes no port one by one), except the ports Hutch reserves.
"""

from __future__ import annotations

import functools

from hutch.e2b._control import PUBLIC_TRAFFIC_LABEL
from hutch.e2b._tokens import AccessTokens
from hutch.server.routes import Services


def attach_preview_hosts(svc: Services) -> None:
    """Let the preview proxies (Python and native) admit E2B's hosts with traffic tokens."""
    tokens = AccessTokens.open(svc.config.home)
    svc.previews.traffic_token_of = tokens.traffic_token_for
    svc.previews.reserved_ports = svc.config.reserved_ports

    # NB: asked on the Python proxy's path only (a public sandbox's tokenless requests miss
    # the native proxy's map, which keys on the token). The flag is set at create and never
    # changes, so one store read per sandbox (an id never comes back).
    @functools.lru_cache(maxsize=4096)
    def is_public(sandbox_id: str) -> bool:
        record = svc.store.get_sandbox(sandbox_id)
        return record is not None and record.labels.get(PUBLIC_TRAFFIC_LABEL) == "true"

    svc.previews.is_public = is_public
