"""Persistent state behind the `Store` repository interface: sandboxes, exposed ports,
sessions, API keys (hashed), sealed secrets; SQLite (WAL) today, PostgreSQL later behind the
same interface. It imports nothing of Hutch's: records in, records out.
"""

from hutch.server.store._sqlite import SandboxRecord, SnapshotRecord

__all__ = ["SandboxRecord", "SnapshotRecord"]
