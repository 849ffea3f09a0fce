"""The API's routes, one module per resource (`sandboxes`, `exec`, `files`, `procs`, ...), each
building one APIRouter that the app factory includes.

A route validates its input, calls a service (`svc.sandboxes`, `svc.store`, ...) and shapes the
answer. It may import `hutch.server`'s `_deps`, `_errors`, `_models`, `_relay` and `services`;
it never catches an agent's error (the app maps them in one table, `_agent_errors.py`) and is
never imported by `_deps`.
"""

from hutch.server._agent_errors import as_api_error
from hutch.server._deps import Services, authorize
from hutch.server._errors import ApiError
from hutch.server._metrics import SandboxMetrics, read_sandbox_metrics
from hutch.server._models import SandboxCreate
from hutch.server.routes._files import UPLOAD_CHUNK, check_path
from hutch.server.services._caller import visible
from hutch.server.services._keys import key_from_headers

# What a route builds on, for the API's other front (hutch.e2b: E2B's routes over the same
# services). NB: not on hutch.server itself, whose __init__ imports the app factory, which
# registers that front: importing these through it would be a loop.
__all__ = [
    "Services",
    "UPLOAD_CHUNK",
    "ApiError",
    "SandboxCreate",
    "SandboxMetrics",
    "as_api_error",
    "authorize",
    "check_path",
    "key_from_headers",
    "read_sandbox_metrics",
    "visible",
]
