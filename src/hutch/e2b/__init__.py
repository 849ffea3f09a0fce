"""E2B compatibility: the unmodified ``e2b`` and ``e2b-code-interpreter`` SDKs drive Hutch
with ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` pointed at a Hutch server."""

from hutch.e2b._front import E2bFrontDoor
from hutch.e2b._preview_hosts import attach_preview_hosts

__all__ = ["E2bFrontDoor", "attach_preview_hosts"]
