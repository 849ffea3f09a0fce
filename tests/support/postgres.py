"""A private PostgreSQL server for tests: `initdb` in a temp dir, `pg_ctl start` on a unix socket
there (no TCP port, nothing shared with the machine's own cluster), torn down after.

Debian's `postgresql-15` (scripts/install) puts its programs in /usr/lib/postgresql/15/bin, off
PATH. PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the
package creates (`runuser`), otherwise as the current user.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are (the newest PostgreSQL installed)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install (postgresql-15)")
    return Path(initdb).parent


class PostgresServer:
    """One throwaway server; `url(db)` for a database on it, `new_database()` for a fresh one."""

    def __init__(self, *, fsync: bool = False, tcp: bool = False) -> None:
        """`fsync`: durable commits, as in production (tests skip them); `tcp`: listen on a
        free loopback port too, and hand out URLs that use it."""
        self.fsync = fsync
        self.tcp_port: int | None = None
        if tcp:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.tcp_port = int(s.getsockname()[1])
        self.dir = Path(tempfile.mkdtemp(prefix="hutch-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir  # short path: a unix socket path has ~100 bytes at most
        # Names the socket file (.s.PGSQL.PORT) in our own dir, and the TCP port if any.
        self.port = self.tcp_port or 5432
        self.bindir = postgres_bindir()
        self.started_in: float | None = None
        self._as_user: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.superuser = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")

    def _run(self, *argv: str) -> None:
        subprocess.run(
            [*self._as_user, *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.dir,
        )

    def start(self) -> float:
        """initdb and start; returns the seconds both took."""
        started = time.monotonic()
        if self._as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
        )
        listen = "127.0.0.1" if self.tcp_port else ""
        options = f"-k {self.socket_dir} -p {self.port} -c listen_addresses='{listen}'"
        options += " -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._options = options
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        self.started_in = time.monotonic() - started
        return self.started_in

    def url(self, database: str = "postgres") -> str:
        if self.tcp_port:
            return f"postgresql://{self.superuser}@127.0.0.1:{self.tcp_port}/{database}"
        return f"postgresql://{self.superuser}@/{database}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
        return self.url(name)

    def restart(self) -> None:
        """Stop (ending every client's session, as an upgrade or a failover does; `fast`
        keeps what was committed, which `immediate` without fsync would not) and start."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "server.log"),
            "-o",
            self._options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
