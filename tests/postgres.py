"""A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, `pg_ctl` on a free port.

tests/conftest.py imports the fixtures, so a test just names them: `postgres_cluster`
(session) starts one cluster for the whole run and removes it at the end; `postgres_url` is
its superuser URL; `postgres_database` is a fresh database per test (its superuser URL).
`create_login_role` makes a password login role and returns its URL.
Without the binaries or psycopg the tests skip with the reason, except in CI (`$CI` set),
where they fail: a green CI run must not hide them.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from .machine import free_port, require

SUPERUSER = "postgres"


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<n>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    return Path(versions[-1]).parent if versions else None


@dataclass
class PostgresCluster:
    """A running cluster owned by the test session; `stop`/`start` are for fault tests."""

    bindir: Path
    root: Path
    port: int
    password: str
    run_as: str | None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sockets"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """The superuser's URL for `database` (TCP on 127.0.0.1, password auth)."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), *args]
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self.chown(pwfile)
        subprocess.run(
            self.command(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            self.command(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (clean), or "immediate" (as a crash would)."""
        subprocess.run(
            self.command("pg_ctl", "stop", "-w", "-t", "60", "-D", str(self.datadir), "-m", mode),
            check=True,
            capture_output=True,
        )

    def running(self) -> bool:
        done = subprocess.run(
            self.command("pg_ctl", "status", "-D", str(self.datadir)), capture_output=True
        )
        return done.returncode == 0

    def chown(self, path: Path) -> None:
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(path, user.pw_uid, user.pw_gid)


def start_cluster() -> PostgresCluster:
    """initdb + pg_ctl start in a fresh temp dir (as the `postgres` OS user when root)."""
    bindir = postgres_bindir()
    require(bindir is not None, "PostgreSQL binaries (initdb, pg_ctl) not found: scripts/setup.sh")
    assert bindir is not None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require(False, "psycopg is not installed: pip install 'agentrt-jupyter[postgres]'")
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            require(False, "running as root and there is no `postgres` OS user to run initdb")
        run_as = SUPERUSER
    root = Path(tempfile.mkdtemp(prefix="agentrt-pg-"))
    cluster = PostgresCluster(bindir, root, free_port(), secrets.token_hex(12), run_as)
    cluster.socket_dir.mkdir()
    for path in (root, cluster.socket_dir):
        cluster.chown(path)
    try:
        cluster.initdb()
        cluster.start()
    except subprocess.CalledProcessError as failed:
        log = cluster.logfile.read_text() if cluster.logfile.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL: {failed.stderr!r} {log}")
    return cluster


def with_credentials(url: str, user: str, password: str, database: str | None = None) -> str:
    """`url` with another user and password (and database, if given)."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def create_database(superuser_url: str, name: str | None = None) -> str:
    """A new empty database; returns the superuser's URL for it."""
    import psycopg
    from psycopg import sql

    name = name or f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(superuser_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def create_login_role(
    database_url: str, name: str, password: str, member_of: Sequence[str] = ()
) -> str:
    """A login role with `password` (and membership in `member_of`), if it does not exist;
    returns the URL connecting as it to the same database."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
        for group in member_of:
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
            )
    return with_credentials(database_url, name, password)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        if cluster.running():
            cluster.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The superuser's URL for the cluster's `postgres` database."""
    return postgres_cluster.url()


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """A fresh database for this test; the superuser's URL for it."""
    return create_database(postgres_url)
