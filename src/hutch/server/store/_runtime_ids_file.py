"""The one-time move of pooled sandboxes' runtime ids from the JSON file of older servers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")


def import_runtime_ids_file(path: Path, store: Store) -> None:
    """Move the runtime ids of pooled sandboxes from the JSON file where Hutch kept them before
    (`HOME/runtime-ids.json`) into the store, once."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError as exc:
        log.error("ignoring unreadable %s: %s", path, exc)
        data = {}
    for sandbox_id, runtime_id in data.items():
        record = store.get_sandbox(str(sandbox_id))
        if record is not None and record.runtime_id is None:
            store.set_runtime_id(record.id, str(runtime_id))
    path.unlink()
