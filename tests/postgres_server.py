"""A real, throw-away PostgreSQL server for tests: Debian's `postgresql`, initdb + pg_ctl, no service.

``running_postgres()`` initialises a cluster in a fresh temp folder, starts it on a free loopback
port with its socket in that folder, and removes everything on exit. The server refuses to run as
root, so as root the cluster belongs to the `postgres` user (``runuser``). Where the binaries are
missing and we are root on Debian (CI's fresh machine), ``apt-get install postgresql`` puts them
there; anywhere else the test fails with what to install: it never skips unseen.

The ``postgres_server`` fixture (tests/conftest.py) yields one server per test session;
``server.new_database()`` gives each test its own database and a SQLAlchemy URL naming the psycopg2
driver (``postgresql+psycopg2://``: SQLAlchemy 2.1 would pick psycopg 3 for a bare ``postgresql://``,
which dagster-postgres 0.29 does not support).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl, else None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def postgres_binaries() -> Path:
    """Where initdb/pg_ctl are, installing Debian's `postgresql` first when root and it is missing."""
    bin_dir = _bin_dir()
    if bin_dir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"apt-get install postgresql failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install Debian's "
                    "`postgresql` package (`apt-get install postgresql`); the Postgres tests need a real server")
    return bin_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    folder: Path
    user: str = "postgres"
    count: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "test") -> str:
        """CREATE DATABASE <prefix>_<n>; its SQLAlchemy URL."""
        import psycopg2

        self.count += 1
        name = f"{prefix}_{self.count}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _as_owner(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a server command as `postgres` when we are root (the server refuses root), else as us."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server in a temp folder (trust auth on loopback only); stopped and removed on exit."""
    bin_dir = postgres_binaries()
    folder = Path(tempfile.mkdtemp(prefix="pixart-pg-"))  # under /tmp: reachable by `postgres`
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    try:
        init = _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "--no-sync",
                          "-E", "UTF8"])
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}{init.stderr}"
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
                             "-w", "-t", "60", "start"])
        log = (folder / "log").read_text() if (folder / "log").exists() else ""
        assert started.returncode == 0, f"pg_ctl start failed:\n{started.stdout}{started.stderr}{log}"
        server = PostgresServer(port, folder, user)
        _wait_accepting(server)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


def _wait_accepting(server: PostgresServer, timeout: float = 30.0) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=server.port, user=server.user, dbname="postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
