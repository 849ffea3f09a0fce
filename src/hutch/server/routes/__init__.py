"""The API's routes, one module per resource (`sandboxes`, `exec`, `files`, `procs`, ...), each
building one APIRouter that the app factory includes.

A route validates its input, calls a service (`svc.sandboxes`, `svc.store`, ...) and shapes the
answer. It may import `hutch.server`'s `_deps`, `_errors`, `_models`, `_relay` and `services`;
it never catches an agent's error (the app maps them in one table, `_agent_errors.py`) and is
never imported by `_deps`.
"""
