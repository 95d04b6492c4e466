"""The quota board: what the kernels on one credential share, in tables beside the store.

One process's `QuotaRegistry` knows its own 429s; the board lets every kernel on a key
know them. Per credential fingerprint (never the key) it holds the current 429 episode
(blocked until, when it began, its backoff level, the last quota id), the key's next
start time for a shared request rate (`take_start` books the next free start and
pushes it on by one interval), slot leases for a key-wide concurrency (`acquire_slot`,
each lease renewed while its kernel lives and expiring `SLOT_TTL` after, so a killed
kernel frees its slots), the tokens of
the last minute (`add_tokens` / `minute_tokens`, for a shared `tpm`), and per (user, UTC
day) the tokens and dollars spent (the user budgets of `budget.py`).

On one machine it lives in the store's SQLite file (its own connection, WAL, short
transactions); on a hub in PostgreSQL (`store_url`; the tables go to the `agentrt` schema where it
exists: `POSTGRES_SETUP` is the SQL an admin runs to make them and let the users' roles
in). Times on the board are Unix times: monotonic clocks are not shared between
processes.

A fault of the board (a locked file, PostgreSQL gone) never breaks a call: every method
answers as if the board were empty (the caller falls back to what its process knows),
the fault is logged once, and the board is tried again `RETRY_AFTER` seconds later
(longer after each fault in a row).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

log = logging.getLogger("agentrt_jupyter")
T = TypeVar("T")

SLOT_TTL = 60.0
"""Seconds a concurrency slot is held without a release: a killed kernel's slots free."""
MINUTE = 60.0
RETRY_AFTER = 5.0
"""After a fault, seconds the board is left alone before it is tried again; doubled for
each fault in a row, up to `RETRY_AFTER_MAX` (a stalled database, which costs up to
`PG_TIMEOUT_MS` per try on the runtime loop, is tried less and less often)."""
RETRY_AFTER_MAX = 120.0
BUSY_TIMEOUT = 0.5
"""Seconds an SQLite write waits for another process's transaction (then it is a fault)."""
PG_TIMEOUT_MS = 2000
"""PostgreSQL's connect and statement timeout: a stalled server is a fault, not a hang."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS quota_blocks (
      credential TEXT PRIMARY KEY, blocked_until DOUBLE PRECISION NOT NULL,
      episode_started DOUBLE PRECISION NOT NULL, episodes INTEGER NOT NULL,
      hits INTEGER NOT NULL, quota_id TEXT, scope TEXT,
      next_start DOUBLE PRECISION NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS quota_slots (
      credential TEXT NOT NULL, holder TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL,
      PRIMARY KEY (credential, holder))""",
    """CREATE TABLE IF NOT EXISTS quota_tokens (
      credential TEXT NOT NULL, second BIGINT NOT NULL, tokens BIGINT NOT NULL,
      PRIMARY KEY (credential, second))""",
    """CREATE TABLE IF NOT EXISTS quota_usage (
      user_name TEXT NOT NULL, day TEXT NOT NULL, tokens BIGINT NOT NULL,
      usd DOUBLE PRECISION NOT NULL, PRIMARY KEY (user_name, day))""",
)

_USAGE_GUARD = """
GRANT SELECT, INSERT, UPDATE ON agentrt.quota_usage TO agentrt_users;
ALTER TABLE agentrt.quota_usage ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_usage ON agentrt.quota_usage;
CREATE POLICY own_usage ON agentrt.quota_usage TO agentrt_users
  USING (user_name = current_user) WITH CHECK (user_name = current_user);
CREATE OR REPLACE FUNCTION agentrt.quota_usage_only_grows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.tokens < 0 OR NEW.usd < 0 OR (TG_OP = 'UPDATE' AND (NEW.tokens < OLD.tokens
      OR NEW.usd < OLD.usd OR NEW.user_name <> OLD.user_name OR NEW.day <> OLD.day)) THEN
    RAISE EXCEPTION 'what a user spent only grows';
  END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER quota_usage_only_grows BEFORE INSERT OR UPDATE ON agentrt.quota_usage
  FOR EACH ROW EXECUTE FUNCTION agentrt.quota_usage_only_grows();
"""

POSTGRES_SETUP = (
    "\n".join(
        f"{statement.replace('IF NOT EXISTS ', 'IF NOT EXISTS agentrt.')};" for statement in _SCHEMA
    )
    + "\nGRANT SELECT, INSERT, UPDATE, DELETE ON agentrt.quota_blocks, agentrt.quota_slots, "
    "agentrt.quota_tokens TO agentrt_users;\n" + _USAGE_GUARD
)
"""The board's tables in the `agentrt` schema of `stores/pg_setup.sql`, for its roles. A
user's role counts its own spending only, under its own name, and cannot lower it (row
security and a trigger), so a budget holds against raw SQL from the user's kernel."""

_PUBLISH_HIT = """
INSERT INTO quota_blocks (credential, blocked_until, episode_started, episodes, hits,
                          quota_id, scope)
VALUES (?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (credential) DO UPDATE SET
  episode_started = CASE WHEN quota_blocks.blocked_until > ? THEN quota_blocks.episode_started
                         ELSE excluded.episode_started END,
  episodes = CASE WHEN quota_blocks.blocked_until > ? AND quota_blocks.episodes > excluded.episodes
                  THEN quota_blocks.episodes ELSE excluded.episodes END,
  blocked_until = CASE WHEN quota_blocks.blocked_until > excluded.blocked_until
                       THEN quota_blocks.blocked_until ELSE excluded.blocked_until END,
  hits = quota_blocks.hits + 1,
  quota_id = excluded.quota_id,
  scope = excluded.scope"""
_READ_BLOCK = (
    "SELECT blocked_until, episode_started, episodes, hits, quota_id, scope "
    "FROM quota_blocks WHERE credential = ?"
)
_ADD_USAGE = """
INSERT INTO quota_usage (user_name, day, tokens, usd) VALUES (?, ?, ?, ?)
ON CONFLICT (user_name, day) DO UPDATE SET
  tokens = quota_usage.tokens + excluded.tokens, usd = quota_usage.usd + excluded.usd"""
_ADD_TOKENS = """
INSERT INTO quota_tokens (credential, second, tokens) VALUES (?, ?, ?)
ON CONFLICT (credential, second) DO UPDATE SET tokens = quota_tokens.tokens + excluded.tokens"""


@dataclass(frozen=True)
class SharedBlock:
    """A credential's 429 episode as the board has it (Unix times).

    `hits` counts every 429 any kernel published for the key; `episodes` is the backoff
    level of the episode (blocks in a row without a success)."""

    blocked_until: float
    episode_started: float
    episodes: int
    hits: int
    quota_id: str | None
    scope: str | None


@dataclass(frozen=True)
class Spent:
    """What a user spent on one UTC day, across all their kernels."""

    tokens: int
    usd: float


class _Database(Protocol):
    """The little the board asks of a connection, the same on SQLite and PostgreSQL."""

    where: str
    role: str | None
    """The database role spending is counted under (a hub user's own role), if any."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def transaction(self, lock: str) -> contextlib.AbstractContextManager[None]: ...

    def prepare(self) -> None:
        """Make the board's tables if they are missing."""

    def lost(self) -> bool:
        """The server closed the connection (a new one may work)."""

    def close(self) -> None: ...


class _SQLite:
    """The store's file through a connection of the board's own (WAL, short waits)."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        self.role: str | None = None
        self._db = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, tuple(params)).fetchall()

    def prepare(self) -> None:
        for statement in _SCHEMA:
            self._db.execute(statement)

    def lost(self) -> bool:
        return False  # a file is not closed under us

    @contextlib.contextmanager
    def transaction(self, lock: str) -> Iterator[None]:
        """One writer at a time on the file (`BEGIN IMMEDIATE`); `lock` is PostgreSQL's."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class _Postgres:
    """A PostgreSQL connection (psycopg 3, autocommit; a transaction per change)."""

    def __init__(self, url: str) -> None:
        import psycopg  # only on a hub

        self.where = "PostgreSQL"
        self._db = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, PG_TIMEOUT_MS // 1000),
            options=f"-c statement_timeout={PG_TIMEOUT_MS} -c search_path=agentrt,public",
        )
        row = self._db.execute(  # a direct member (pg_has_role is true for a superuser)
            "SELECT current_user, EXISTS (SELECT 1 FROM pg_auth_members m"
            " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member"
            " WHERE g.rolname = 'agentrt_users' AND u.rolname = current_user)"
        ).fetchone()
        self.role = str(row[0]) if row is not None and row[1] else None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._db.execute(sql.replace("?", "%s"), tuple(params))
        return list(cursor.fetchall()) if cursor.description is not None else []

    def prepare(self) -> None:
        """Make the tables only where they are missing: a user's role on a hub may not
        create tables (the admin made them with `POSTGRES_SETUP`)."""
        if self.execute("SELECT to_regclass('quota_usage')")[0][0] is None:
            for statement in _SCHEMA:
                self.execute(statement)

    def lost(self) -> bool:
        return bool(self._db.broken or self._db.closed)

    @contextlib.contextmanager
    def transaction(self, lock: str) -> Iterator[None]:
        """A transaction holding an advisory lock on `lock` (one credential's or user's
        rows change one kernel at a time)."""
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            yield

    def close(self) -> None:
        self._db.close()


class QuotaBoard:
    """The tables kernels share for quota; every method answers even when the database
    does not (see the module docstring). Safe to call from any thread."""

    def __init__(
        self, connect: Callable[[], _Database], clock: Callable[[], float] = time.time
    ) -> None:
        self._connect = connect
        self._clock = clock
        self._db: _Database | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._fault_logged = False
        self._faults_in_a_row = 0
        self.faults = 0
        """Faults so far (each one fell back to what this process knows)."""

    @classmethod
    def sqlite(cls, path: Path, clock: Callable[[], float] = time.time) -> QuotaBoard:
        """The board in the store's file at `path` (open the store first: it makes the file)."""
        return cls(lambda: _SQLite(path), clock)

    @classmethod
    def postgres(cls, url: str, clock: Callable[[], float] = time.time) -> QuotaBoard:
        return cls(lambda: _Postgres(url), clock)

    def now(self) -> float:
        return self._clock()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(Exception):
                    self._db.close()
                self._db = None

    def _run(self, work: Callable[[_Database], T], default: T) -> T:
        """`work` on the connection, or `default` while the board is down; a fault is
        logged once, closes the connection and leaves the board alone `RETRY_AFTER` s."""
        with self._lock:
            if self._db is None and time.monotonic() < self._down_until:
                return default
            try:
                result = self._attempt(work)
            except Exception as exc:  # sqlite3, psycopg: any fault means "no board now"
                self._fault(exc)
                return default
            self._faults_in_a_row = 0
            if self._fault_logged:
                log.warning("quota board: reachable again; kernels share the key's quota")
                self._fault_logged = False
            return result

    def _attempt(self, work: Callable[[_Database], T]) -> T:
        """`work` on the open connection, or on a new one when the server closed it while
        it was idle (a database restart between two calls goes unnoticed)."""
        db = self._db
        if db is not None:
            try:
                return work(db)
            except Exception:
                if not db.lost():
                    raise
                self._db = None
                with contextlib.suppress(Exception):
                    db.close()
        self._db = self._connect()
        self._db.prepare()
        return work(self._db)

    def _fault(self, exc: Exception) -> None:
        self.faults += 1
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None
        self._faults_in_a_row += 1
        pause = min(RETRY_AFTER_MAX, RETRY_AFTER * 2 ** min(self._faults_in_a_row - 1, 10))
        self._down_until = time.monotonic() + pause
        if not self._fault_logged:
            self._fault_logged = True
            log.warning(
                "quota board unavailable (%s: %s): each kernel keeps to its own quota "
                "until it is back",
                exc.__class__.__name__,
                exc,
            )

    def read(self, credential: str) -> SharedBlock | None:
        """The credential's episode as published (None: none, or the board is down)."""

        def work(db: _Database) -> SharedBlock | None:
            rows = db.execute(_READ_BLOCK, (credential,))
            return _block(rows[0]) if rows else None

        return self._run(work, None)

    def publish_hit(
        self,
        credential: str,
        *,
        blocked_until: float,
        episode_started: float,
        episodes: int,
        quota_id: str | None,
        scope: str | None,
    ) -> SharedBlock | None:
        """Publish a 429: the key's block lasts at least until `blocked_until`; joins the
        episode on the board if it is still on. The merged episode, or None."""
        now = self._clock()
        values = (credential, blocked_until, episode_started, episodes, quota_id, scope, now, now)

        def work(db: _Database) -> SharedBlock | None:
            with db.transaction(credential):
                db.execute(_PUBLISH_HIT, values)
                rows = db.execute(_READ_BLOCK, (credential,))
            return _block(rows[0]) if rows else None

        return self._run(work, None)

    def take_start(self, credential: str, interval: float) -> float:
        """Book a start at the key's shared rate (one per `interval` s across kernels):
        the seconds until the booked start (0.0: now). The booking is kept, so the caller
        starts then without asking again; while the board is down, 0.0."""
        now = self._clock()

        def work(db: _Database) -> float:
            with db.transaction(credential):
                db.execute(
                    "INSERT INTO quota_blocks (credential, blocked_until, episode_started, "
                    "episodes, hits) VALUES (?, 0, 0, 0, 0) ON CONFLICT (credential) DO NOTHING",
                    (credential,),
                )
                rows = db.execute(
                    "SELECT next_start FROM quota_blocks WHERE credential = ?", (credential,)
                )
                booked = max(now, float(rows[0][0]) if rows else 0.0)
                db.execute(
                    "UPDATE quota_blocks SET next_start = ? WHERE credential = ?",
                    (booked + interval, credential),
                )
            return booked - now

        return self._run(work, 0.0)

    def acquire_slot(self, credential: str, holder: str, limit: int) -> bool | None:
        """Take one of the key's `limit` slots for `holder` (a row in flight), if fewer are
        held across kernels; None when the board is down (the caller decides alone)."""
        now = self._clock()

        def work(db: _Database) -> bool:
            with db.transaction(credential):
                db.execute(
                    "DELETE FROM quota_slots WHERE credential = ? AND expires <= ?",
                    (credential, now),
                )
                held = db.execute(
                    "SELECT count(*) FROM quota_slots WHERE credential = ?", (credential,)
                )[0][0]
                if held >= limit:
                    return False
                db.execute(
                    "INSERT INTO quota_slots (credential, holder, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (credential, holder) DO UPDATE SET expires = excluded.expires",
                    (credential, holder, now + SLOT_TTL),
                )
            return True

        return self._run(work, None)

    def renew_slots(self, credential: str, prefix: str) -> None:
        """Keep the slots of holders named `prefix-...` (one run's rows) for another
        `SLOT_TTL`: a row longer than that keeps its slot while its kernel lives."""
        expires = self._clock() + SLOT_TTL

        def work(db: _Database) -> None:
            db.execute(
                "UPDATE quota_slots SET expires = ? WHERE credential = ? AND holder LIKE ?",
                (expires, credential, f"{prefix}-%"),
            )

        self._run(work, None)

    def release_slot(self, credential: str, holder: str) -> None:
        def work(db: _Database) -> None:
            db.execute(
                "DELETE FROM quota_slots WHERE credential = ? AND holder = ?", (credential, holder)
            )

        self._run(work, None)

    def slots_held(self, credential: str) -> int | None:
        """Slots held now across kernels (None when the board is down)."""
        now = self._clock()

        def work(db: _Database) -> int:
            rows = db.execute(
                "SELECT count(*) FROM quota_slots WHERE credential = ? AND expires > ?",
                (credential, now),
            )
            return int(rows[0][0])

        return self._run(work, None)

    def add_tokens(self, credential: str, tokens: int) -> None:
        """Count tokens a call on the key used, for the shared `tpm` window."""
        now = self._clock()

        def work(db: _Database) -> None:
            db.execute(_ADD_TOKENS, (credential, int(now), tokens))
            db.execute(
                "DELETE FROM quota_tokens WHERE credential = ? AND second < ?",
                (credential, int(now - MINUTE)),
            )

        self._run(work, None)

    def minute_tokens(self, credential: str) -> int | None:
        """Tokens used on the key in the last minute across kernels (None: board down)."""
        now = self._clock()

        def work(db: _Database) -> int:
            rows = db.execute(
                "SELECT coalesce(sum(tokens), 0) FROM quota_tokens "
                "WHERE credential = ? AND second > ?",
                (credential, int(now - MINUTE)),
            )
            return int(rows[0][0])

        return self._run(work, None)

    def add_usage(self, user: str, day: str, tokens: int, usd: float) -> None:
        """Count what a call of `user` (or of the hub user's own database role) cost on UTC
        `day` (YYYY-MM-DD)."""

        def work(db: _Database) -> None:
            db.execute(_ADD_USAGE, (db.role or user, day, tokens, usd))

        self._run(work, None)

    def spent(self, user: str, day: str) -> Spent | None:
        """What `user` spent on `day` across kernels (None: the board is down)."""

        def work(db: _Database) -> Spent:
            rows = db.execute(
                "SELECT tokens, usd FROM quota_usage WHERE user_name = ? AND day = ?",
                (db.role or user, day),
            )
            return Spent(int(rows[0][0]), float(rows[0][1])) if rows else Spent(0, 0.0)

        return self._run(work, None)


def _block(row: tuple[Any, ...]) -> SharedBlock:
    until, started, episodes, hits, quota_id, scope = row
    return SharedBlock(float(until), float(started), int(episodes), int(hits), quota_id, scope)
