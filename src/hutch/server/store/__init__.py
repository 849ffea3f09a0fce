"""Persistent state behind the `Store` interface (SQLite today)."""
