"""The one way every `hutch` command reaches the server: a Client from --url/--api-key, else
HUTCH_URL/HUTCH_API_KEY (the SDK reads those)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hutch.sdk import Client


def client_for(args: argparse.Namespace) -> Client:
    # Imported here: `hutch serve` and `hutch --help` never load the SDK's HTTP stack.
    from hutch.sdk import Client

    return Client(base_url=getattr(args, "url", None), api_key=getattr(args, "api_key", None))
