"""`PgStore`: the conversation store on PostgreSQL (psycopg 3), for a team on a hub.

Same semantics as the SQLite `Store` (append-only records, writer leases with heartbeat and
take-over, drafts, interrupted calls answered on `open`, the reply cache, `delete` that
leaves nothing) over the tables `pg_setup.sql` makes. Every row carries its `owner`, and
every query filters by it; the database enforces it too: each user connects as a login
role in `agentrt_users`, whose row-level security policies show only `owner = current_user`.

One connection (autocommit, each write its own transaction), used behind a lock from the
runtime thread. psycopg errors become `StoreError` in `_boundary` and nowhere else; the URL
in messages never shows the password. A connection lost (server restarted, network cut) is
made again at the next use, no sooner than a backoff that doubles up to `MAX_BACKOFF`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors

from ..config import redacted_url
from ..errors import StoreError
from ..identity import current_user
from ..store import CachedReply, CacheStats, _reply, _reply_json
from .base import TEAM_SCOPE
from .journal import (
    ConversationRows,
    JournalStore,
    LoadedConversation,
    _ledger_entry,
    _message,
    _Unstorable,
)
from .leases import Leases
from .pgschema import LISTING, MIGRATIONS, SCHEMA_VERSION, connect, fill_prices

log = logging.getLogger("agentrt_jupyter")

MAX_BACKOFF = 30.0
"""The longest wait between two attempts to reconnect to a database that went away."""


def _closed_by_server(conn: psycopg.Connection) -> bool:
    """Whether the server has closed this idle connection: nothing else makes an idle
    connection readable (a termination notice, or the end of the stream)."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class PgStore(JournalStore[psycopg.Connection]):
    """Conversations and the reply cache in a PostgreSQL database; see the module docstring.

    `owner` is whose rows these are: the connected role when it is in `agentrt_users` (the
    database enforces it), else `identity.current_user()`. Raises `StoreError` if the
    database cannot be reached, is newer, or its schema cannot be made.
    """

    def __init__(
        self,
        url: str,
        *,
        holder: str = "python",
        lease_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
        cache_max_entries: int | None = 10_000,
        cache_max_bytes: int | None = 256 * 2**20,
    ) -> None:
        self._url = url
        self.location = redacted_url(url)
        self._options: dict[str, Any] = {
            "holder": holder, "lease_timeout": lease_timeout, "connect_timeout": connect_timeout,
            "statement_timeout": statement_timeout, "cache_max_entries": cache_max_entries,
            "cache_max_bytes": cache_max_bytes,
        }  # fmt: skip
        self._lock = threading.Lock()
        self._leases = Leases(holder, lease_timeout)
        self.holder = self._leases.holder
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._cache_max_entries = cache_max_entries
        self._cache_max_bytes = cache_max_bytes
        self._closed = False
        self._conn: psycopg.Connection | None = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        with self._boundary("open the store") as conn:
            self._prepare(conn)
            self.owner = self._owner_of(conn)

    def __repr__(self) -> str:
        return f"PgStore({self.location!r})"

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reopen(self) -> PgStore:
        return PgStore(self._url, **self._options)

    def close(self) -> None:
        """Release every lease this store holds and close the connection; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            held = bool(self._leases.held)
            self._leases.held.clear()
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if held:
                conn.execute("DELETE FROM agentrt.leases WHERE token = %s", (self._leases.token,))
        with contextlib.suppress(Exception):
            conn.close()

    @property
    def pages_checked(self) -> bool:
        return True  # the server checks its own pages

    def check_pages(self) -> None:
        pass

    def latest(self, namespace: str, name: str) -> str | None:
        with self._boundary(f"look up conversation {name!r}") as conn:
            row = conn.execute(
                "SELECT id FROM agentrt.conversations WHERE owner = %s AND namespace = %s"
                " AND name = %s ORDER BY seq DESC LIMIT 1",
                (self.owner, namespace, name),
            ).fetchone()
        return None if row is None else str(row[0])

    def load(self, conversation_id: str) -> LoadedConversation | None:
        """Read without taking it: one snapshot, while its writer may go on appending."""
        with self._write(f"load conversation {conversation_id}") as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return self._read(conn, conversation_id, persist=False)

    def release(self, conversation_id: str) -> None:
        self._leases.held.pop(conversation_id, None)
        with self._boundary(f"release conversation {conversation_id}") as conn:
            conn.execute(
                "DELETE FROM agentrt.leases WHERE conversation = %s AND token = %s",
                (conversation_id, self._leases.token),
            )

    def heartbeat(self) -> list[str]:
        """Renew the leases; without any, still reach the database (a reconnect's test)."""
        if not self._leases.held:
            with self._boundary("reach the database") as conn:
                conn.execute("SELECT 1")
            return []
        with self._write("renew the conversation leases") as conn:
            kept = {
                cid
                for (cid,) in conn.execute(
                    "UPDATE agentrt.leases SET heartbeat = %s WHERE token = %s"
                    " RETURNING conversation",
                    (time.time(), self._leases.token),
                )
            }
        return self._leases.keep(kept)

    def cache_get(self, key: str, *, scope: str | None = None) -> CachedReply | None:
        with self._boundary("read the reply cache") as conn:
            row = conn.execute(
                "UPDATE agentrt.replies SET hits = hits + 1, used = %s"
                " WHERE scope = %s AND key = %s RETURNING data",
                (time.time(), self._scope(scope), key),
            ).fetchone()
            return None if row is None else _reply(row[0])

    def cache_put(
        self,
        key: str,
        reply: CachedReply,
        *,
        conversation: str | None = None,
        scope: str | None = None,
    ) -> None:
        """Record `reply`, evicting the user's least recently used past the bounds (a reply
        larger than `cache_max_bytes` alone is not kept); a team-scoped one never names the
        conversation it came from."""
        scope = self._scope(scope)
        with self._write("store a reply in the cache") as conn:
            data = _reply_json(reply)
            size = len(data.encode())
            if self._cache_max_bytes is not None and size > self._cache_max_bytes:
                return
            conn.execute(
                "INSERT INTO agentrt.replies (scope, key, bytes, used, conversation, data)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (scope, key) DO UPDATE SET"
                " bytes = excluded.bytes, used = excluded.used,"
                " conversation = excluded.conversation, data = excluded.data",
                (
                    scope, key, size, time.time(),
                    None if scope == TEAM_SCOPE else conversation, data,
                ),
            )  # fmt: skip
            self._evict(conn)

    def _evict(self, conn: psycopg.Connection) -> None:
        """Drop the user's least recently used replies until within the cache's bounds."""
        entries, size = self._cache_max_entries, self._cache_max_bytes
        if entries is None and size is None:
            return
        conn.execute(
            "DELETE FROM agentrt.replies WHERE scope = %(owner)s AND key IN ("
            " SELECT key FROM (SELECT key,"
            "  row_number() OVER (ORDER BY used DESC) AS n,"
            "  sum(bytes) OVER (ORDER BY used DESC) AS total"
            "  FROM agentrt.replies WHERE scope = %(owner)s) ranked"
            " WHERE n > coalesce(%(entries)s, n) OR total > coalesce(%(size)s, total))",
            {"owner": self.owner, "entries": entries, "size": size},
        )

    def cache_stats(self) -> CacheStats:
        """The user's own cached replies (the team's are counted by whoever clears them)."""
        with self._boundary("read the reply cache") as conn:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(hits), 0)"
                " FROM agentrt.replies WHERE scope = %s",
                (self.owner,),
            ).fetchone()
        assert row is not None
        return CacheStats(int(row[0]), int(row[1]), int(row[2]))

    def cache_clear(self) -> None:
        with self._boundary("clear the reply cache") as conn:
            conn.execute("DELETE FROM agentrt.replies WHERE scope = %s", (self.owner,))

    def _scope(self, scope: str | None) -> str:
        return TEAM_SCOPE if scope == TEAM_SCOPE else self.owner

    @contextlib.contextmanager
    def _boundary(self, doing: str) -> Iterator[psycopg.Connection]:
        """The one place where psycopg, JSON and decoding errors become `StoreError`."""
        with self._lock:
            conn = self._connection(doing)
            try:
                yield conn
            except psycopg.Error as exc:
                raise self._fault(exc, doing) from exc
            except _Unstorable as exc:
                raise StoreError(
                    f"cannot {doing}: a value is not JSON-serialisable ({exc})",
                    path=self.location,
                ) from exc
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreError(
                    f"cannot {doing}: the database holds a record that cannot be read "
                    f"({exc.__class__.__name__}: {exc})",
                    path=self.location,
                ) from exc

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[psycopg.Connection]:
        with self._boundary(doing) as conn, conn.transaction():
            yield conn

    def _connection(self, doing: str) -> psycopg.Connection:
        """The live connection, made again after one was lost (not before the backoff).

        One the server closed while it was idle (a restart between two writes) is made
        again before use, so the write goes through instead of failing."""
        if self._closed:
            raise StoreError(f"cannot {doing}: the store was closed", path=self.location)
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            if not _closed_by_server(conn):
                return conn
            with contextlib.suppress(psycopg.Error):
                conn.close()
        now = time.monotonic()
        if now < self._next_attempt:
            raise StoreError(
                f"cannot {doing}: the database is unreachable; next attempt in "
                f"{self._next_attempt - now:.1f} s",
                path=self.location,
            )
        try:
            self._conn = connect(self._url, self._connect_timeout, self._statement_timeout)
        except psycopg.Error as exc:
            self._backoff = min(MAX_BACKOFF, max(0.5, self._backoff * 2))
            self._next_attempt = time.monotonic() + self._backoff
            raise self._fault(exc, doing) from exc
        self._backoff, self._next_attempt = 0.0, 0.0
        return self._conn

    def _fault(self, exc: psycopg.Error, doing: str) -> StoreError:
        if isinstance(exc, errors.InsufficientPrivilege):
            why = f"not permitted for this database role ({exc.diag.message_primary or exc})"
        elif isinstance(exc, errors.QueryCanceled):
            why = f"the database did not answer within {self._statement_timeout:g} s"
        elif isinstance(exc, errors.OperationalError) or self._conn is None or self._conn.broken:
            why = f"the database cannot be reached ({str(exc).strip() or type(exc).__name__})"
        else:
            why = str(exc).strip() or type(exc).__name__
        return StoreError(f"cannot {doing}: {why}", path=self.location)

    def _prepare(self, conn: psycopg.Connection) -> None:
        """Check the schema is ours and current; make or migrate it (if this role may)."""
        version = self._version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot open the store: it was written by a newer agentrt-jupyter (store "
                f"schema {version}; this version reads up to {SCHEMA_VERSION}): upgrade "
                "agentrt-jupyter",
                path=self.location,
            )
        if version < SCHEMA_VERSION:
            self._migrate(conn)

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Bring the schema to `SCHEMA_VERSION`, one process at a time.

        The version is read again after the lock, in a transaction of its own: one begun
        before the wait would still see the catalog as it was (no schema), and run the
        DDL again while the winner's writers use the tables (a deadlock).
        """
        conn.execute("SELECT pg_advisory_lock(hashtext('agentrt setup'))")
        try:
            version = self._version(conn)
            if version >= SCHEMA_VERSION:
                return
            with conn.transaction():
                for step in range(version, SCHEMA_VERSION):
                    conn.execute(MIGRATIONS[step]().encode())
                fill_prices(conn)
                conn.execute(
                    "UPDATE agentrt.meta SET value = %s WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
            log.info("set up %s at store schema %d", self.location, SCHEMA_VERSION)
        finally:
            if not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(hashtext('agentrt setup'))")

    @staticmethod
    def _version(conn: psycopg.Connection) -> int:
        found = conn.execute("SELECT to_regclass('agentrt.meta') IS NOT NULL").fetchone()
        if not found or not found[0]:
            return 0
        row = conn.execute("SELECT value FROM agentrt.meta WHERE key = 'schema_version'").fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _owner_of(conn: psycopg.Connection) -> str:
        row = conn.execute(
            "SELECT current_user, EXISTS (SELECT 1 FROM pg_auth_members m"
            " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member"
            " WHERE g.rolname = 'agentrt_users' AND u.rolname = current_user)"
        ).fetchone()
        assert row is not None
        return str(row[0]) if row[1] else current_user()

    def _append(
        self,
        conn: psycopg.Connection,
        conversation_id: str,
        kind: str,
        data: str,
        role: str | None = None,
        turn: int | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO agentrt.records (conversation, owner, kind, role, turn, written, data)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (conversation_id, self.owner, kind, role, turn, time.time(), data),
        )

    def _lease(self, conn: psycopg.Connection, conversation_id: str, now: float) -> None:
        conn.execute(
            "INSERT INTO agentrt.leases (conversation, owner, token, holder, pid, host, heartbeat)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (conversation) DO UPDATE SET"
            " token = excluded.token, holder = excluded.holder, pid = excluded.pid,"
            " host = excluded.host, heartbeat = excluded.heartbeat",
            (conversation_id, self.owner, *self._leases.row(now)),
        )

    def _locked_name(self, conn: psycopg.Connection, conversation_id: str) -> str | None:
        """The conversation's name, its row locked until the transaction ends (claims queue)."""
        row = conn.execute(
            "SELECT name FROM agentrt.conversations WHERE id = %s AND owner = %s FOR UPDATE",
            (conversation_id, self.owner),
        ).fetchone()
        return None if row is None else str(row[0])

    def _lease_of(self, conn: psycopg.Connection, conversation_id: str) -> Sequence[Any] | None:
        return conn.execute(
            "SELECT token, holder, pid, host, heartbeat FROM agentrt.leases"
            " WHERE conversation = %s",
            (conversation_id,),
        ).fetchone()

    def _renew(self, conn: psycopg.Connection, conversation_id: str) -> None:
        renewed = conn.execute(
            "UPDATE agentrt.leases SET heartbeat = %s WHERE conversation = %s AND token = %s",
            (time.time(), conversation_id, self._leases.token),
        ).rowcount
        if renewed:
            return
        found = conn.execute(
            "SELECT c.name, l.holder FROM agentrt.conversations c"
            " LEFT JOIN agentrt.leases l ON l.conversation = c.id WHERE c.id = %s",
            (conversation_id,),
        ).fetchone()
        raise self._leases.lost(conversation_id, found, self.location)

    def _settings_text(self, conn: psycopg.Connection, conversation_id: str) -> str | None:
        row = conn.execute(
            "SELECT data FROM agentrt.records WHERE conversation = %s AND kind = 'settings'"
            " ORDER BY seq DESC LIMIT 1",
            (conversation_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def _rows(self, conn: psycopg.Connection, conversation_id: str) -> ConversationRows | None:
        row = conn.execute(
            "SELECT namespace, name FROM agentrt.conversations WHERE id = %s AND owner = %s",
            (conversation_id, self.owner),
        ).fetchone()
        if row is None:
            return None
        records = conn.execute(
            "SELECT kind, seq, turn, data FROM agentrt.records WHERE conversation = %s"
            " ORDER BY seq",
            (conversation_id,),
        ).fetchall()
        cleared = max((seq for kind, seq, _, _ in records if kind == "cleared"), default=0)
        turn_seq = max((turn or 0 for _, _, turn, _ in records), default=0)
        messages = [
            _message(data) for kind, seq, _, data in records if kind == "message" and seq > cleared
        ]
        ledger = [_ledger_entry(data) for kind, _, _, data in records if kind == "ledger"]
        draft = conn.execute(
            "SELECT data FROM agentrt.drafts WHERE conversation = %s", (conversation_id,)
        ).fetchone()
        return ConversationRows(
            row[0], row[1], messages, ledger, None if draft is None else draft[0], turn_seq
        )

    def _erase(
        self, conn: psycopg.Connection, table: str, column: str, conversation_id: str
    ) -> None:
        """Delete rows (autovacuum reclaims their space)."""
        conn.execute(f"DELETE FROM agentrt.{table} WHERE {column} = %s", (conversation_id,))

    def _insert_conversation(
        self, conn: psycopg.Connection, conversation_id: str, namespace: str, name: str, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO agentrt.conversations (id, owner, namespace, name, created)"
            " VALUES (%s, %s, %s, %s, %s)",
            (conversation_id, self.owner, namespace, name, now),
        )

    def _listing(self, conn: psycopg.Connection, namespace: str | None) -> list[Sequence[Any]]:
        return list(conn.execute(LISTING, {"owner": self.owner, "namespace": namespace}).fetchall())

    def _put_draft(self, conn: psycopg.Connection, conversation_id: str, data: str) -> None:
        conn.execute(
            "INSERT INTO agentrt.drafts (conversation, owner, written, data)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (conversation) DO UPDATE SET"
            " written = excluded.written, data = excluded.data",
            (conversation_id, self.owner, time.time(), data),
        )

    def _drop_draft(self, conn: psycopg.Connection, conversation_id: str) -> None:
        conn.execute("DELETE FROM agentrt.drafts WHERE conversation = %s", (conversation_id,))
