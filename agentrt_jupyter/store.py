"""SQLite persistence: append-only conversations per namespace, writer leases, a reply cache.

A conversation is named by (namespace, name): the notebook (or an explicit namespace for
the Python API, `DEFAULT_NAMESPACE` for scripts) and the agent's name. Every start of one
gets its own id, so two kernels never write into each other's; `latest` finds the newest.

Rows are only ever appended (messages, ledger rows, settings, "cleared" markers; a
compaction is its "summary" message), each in its own transaction, so a killed kernel loses
nothing that was recorded. The one row that is rewritten is a conversation's *draft*: the
checkpoint of the reply being streamed, replaced at each `checkpoint` and dropped when the
reply is appended; after a crash it loads as an `incomplete` model message.

One live writer per conversation: `create` and `open` take a lease (holder, pid, host,
heartbeat), every write checks it, `heartbeat` renews them all, `release`/`close` let go.
A holder on this host whose pid is gone, or any holder silent for `lease_timeout`, is
dead and is taken over at once; a live one gives `ConversationInUse` unless `take_over`.

Every sqlite3, JSON and decoding error becomes a `StoreError` naming the file and what to
do, in `Store._boundary` and nowhere else. The connection is shared by the thread that
builds the store and the runtime thread, behind a lock.

What the PostgreSQL store does alike is written once: the records' JSON forms and the
operations over each store's SQL in `stores.journal`, the lease decisions in `stores.leases`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .content import Part, part_from_json, part_to_json
from .conversation import (
    ConversationMessage,
    Usage,
)
from .errors import StoreError
from .identity import current_user
from .stores.journal import INTERRUPTED as INTERRUPTED
from .stores.journal import (
    ConversationRows,
    JournalStore,
    _dumps,
    _ledger_entry,
    _ledger_json,
    _message,
    _message_json,
    _Unstorable,
)
from .stores.journal import LoadedConversation as LoadedConversation
from .stores.journal import StoredConversation as StoredConversation
from .stores.leases import Leases

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""`PRAGMA user_version` of the files this module writes; 0 is the unversioned first store,
2 added the conversations' owner."""

TEAM_SCOPE = "team"
"""The reply cache's shared scope (`cache_scope="team"`); the default scope is the user's."""

DEFAULT_NAMESPACE = "default"
"""The namespace of conversations made outside a notebook, and of those migrated from v0."""

STORED_SETTINGS = (
    "model", "system_instruction", "temperature", "top_p", "top_k", "max_output_tokens",
    "stop_sequences", "seed", "thinking_budget", "include_thoughts", "response_mime_type",
    "max_tool_steps", "compaction_threshold", "api_version", "base_url", "project", "location",
)  # fmt: skip
"""AgentConfig fields that can be stored (tools, callbacks and keys cannot)."""


ADVICE = (
    "move or delete the file, set AGENTRT_HOME to use another directory, "
    "or pass store_path=None to run without a store"
)

_SCHEMA = (
    """CREATE TABLE conversations (
      seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, namespace TEXT NOT NULL,
      name TEXT NOT NULL, created REAL NOT NULL)""",
    "CREATE INDEX conversations_by_name ON conversations (namespace, name)",
    """CREATE TABLE records (
      seq INTEGER PRIMARY KEY, conversation TEXT NOT NULL,
      kind TEXT NOT NULL CHECK (kind IN ('settings', 'message', 'ledger', 'cleared')),
      role TEXT, turn INTEGER, written REAL NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX records_by_conversation ON records (conversation, kind, seq)",
    """CREATE TABLE drafts (
      conversation TEXT PRIMARY KEY, written REAL NOT NULL, data TEXT NOT NULL)""",
    """CREATE TABLE leases (
      conversation TEXT PRIMARY KEY, token TEXT NOT NULL, holder TEXT NOT NULL,
      pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat REAL NOT NULL)""",
    "CREATE INDEX leases_by_token ON leases (token)",
    """CREATE TABLE replies (
      key TEXT PRIMARY KEY, bytes INTEGER NOT NULL, used REAL NOT NULL,
      hits INTEGER NOT NULL DEFAULT 0, conversation TEXT, data TEXT NOT NULL)""",
    "CREATE INDEX replies_by_use ON replies (used, bytes)",
    "CREATE INDEX replies_by_conversation ON replies (conversation)",
)
_TABLES = frozenset({"conversations", "records", "drafts", "leases", "replies"})
_V0_TABLES = frozenset({"agents", "messages", "ledger"})

_LISTING = """
WITH cleared AS (
  SELECT conversation, max(seq) AS seq FROM records WHERE kind = 'cleared'
  GROUP BY conversation),
shown AS (
  SELECT r.conversation, count(*) AS messages,
         count(DISTINCT CASE WHEN r.role != 'summary' THEN r.turn END) AS turns
  FROM records r LEFT JOIN cleared k ON k.conversation = r.conversation
  WHERE r.kind = 'message' AND r.seq > coalesce(k.seq, 0) GROUP BY r.conversation),
totals AS (
  SELECT conversation, sum(length(CAST(data AS BLOB))) AS size, max(written) AS last
  FROM records GROUP BY conversation)
SELECT c.id, c.namespace, c.name, c.created,
       coalesce(s.messages, 0) + (d.conversation IS NOT NULL), coalesce(s.turns, 0),
       coalesce(t.size, 0) + coalesce(length(CAST(d.data AS BLOB)), 0),
       max(coalesce(t.last, c.created), coalesce(d.written, 0)),
       l.token, l.holder, l.pid, l.host, l.heartbeat
FROM conversations c
LEFT JOIN shown s ON s.conversation = c.id
LEFT JOIN totals t ON t.conversation = c.id
LEFT JOIN drafts d ON d.conversation = c.id
LEFT JOIN leases l ON l.conversation = c.id
WHERE (?1 IS NULL OR c.namespace = ?1) AND c.owner IN (?2, '')
ORDER BY c.seq
"""

QUICK_CHECK_MAX_BYTES = 4 * 2**20
"""The largest file whose every page is checked when the store opens (~1 ms per MiB); the
recorder checks a bigger one in the background."""


_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = (
    10, 11, 13, 14, 26,
)  # fmt: skip


def damaged(error: BaseException) -> bool:
    """Whether `error` (a `StoreError`) comes from corrupt pages of an SQLite file."""
    cause = error.__cause__
    code = getattr(cause, "sqlite_errorcode", -1) & 0xFF
    return isinstance(cause, sqlite3.Error) and code == _SQLITE_CORRUPT


@dataclass(frozen=True, slots=True)
class CachedReply:
    """The recorded reply of one model call, as the reply cache keeps it."""

    parts: tuple[Part, ...]
    usage: Usage
    finish_reason: str | None
    model: str


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Entries and bytes (of stored JSON) in the reply cache, and the hits they served."""

    entries: int
    bytes: int
    hits: int


def _scoped(key: str, scope: str | None) -> str:
    return f"{TEAM_SCOPE}/{key}" if scope == TEAM_SCOPE else key


def _reply_json(reply: CachedReply) -> str:
    return _dumps(
        {
            "parts": [part_to_json(p) for p in reply.parts],
            "usage": asdict(reply.usage),
            "finish_reason": reply.finish_reason,
            "model": reply.model,
        }
    )


def _reply(text: str) -> CachedReply:
    data = json.loads(text)
    return CachedReply(
        tuple(part_from_json(p) for p in data["parts"]),
        Usage(**data["usage"]),
        data["finish_reason"],
        str(data["model"]),
    )


def _quick_check(db: sqlite3.Connection) -> None:
    """SQLite's quick_check of every page; its findings raised as a corrupt-file error."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        found = sqlite3.DatabaseError("; ".join(" ".join(p.split()) for p in problems))
        found.sqlite_errorcode = _SQLITE_CORRUPT
        raise found


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # also: the connection is already closed
        if db.in_transaction:
            db.execute("ROLLBACK")


def _shut(db: sqlite3.Connection, token: str) -> None:
    """Release this store's leases and close its connection (also its finalizer)."""
    _rollback(db)
    with contextlib.suppress(sqlite3.Error):
        db.execute("DELETE FROM leases WHERE token = ?", (token,))
    db.close()


class Store(JournalStore[sqlite3.Connection]):
    """One SQLite file of conversations and the reply cache; see the module docstring.

    `holder` says who writes, for other kernels' `ConversationInUse` (e.g. "kernel
    kernel-1234.json"); pid and host are added. `busy_timeout` bounds each wait for
    another process's write lock; `cache_max_entries` / `cache_max_bytes` (None: no bound)
    bound the reply cache, least recently used first out. Raises `StoreError` if the file
    cannot be used (corrupt, not a store, newer schema, read-only, locked, disk full).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        holder: str = "python",
        lease_timeout: float = 30.0,
        busy_timeout: float = 5.0,
        cache_max_entries: int | None = 10_000,
        cache_max_bytes: int | None = 256 * 2**20,
        owner: str | None = None,
    ) -> None:
        self._db: sqlite3.Connection | None = None
        self.owner = current_user() if owner is None else owner
        """Whose conversations this store sees and makes (rows from before owners: anyone's)."""
        self._path = Path(path).expanduser().absolute()
        self._options: dict[str, Any] = {
            "holder": holder, "lease_timeout": lease_timeout, "busy_timeout": busy_timeout,
            "cache_max_entries": cache_max_entries, "cache_max_bytes": cache_max_bytes,
            "owner": self.owner,
        }  # fmt: skip
        self._lock = threading.Lock()
        self._leases = Leases(holder, lease_timeout)
        self.holder = self._leases.holder
        self._busy_timeout = busy_timeout
        self._cache_max_entries = cache_max_entries
        self._cache_max_bytes = cache_max_bytes
        self._pages_checked = False
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store's directory ({exc.strerror}): make "
                f"{str(self._path.parent)!r} writable, or {ADVICE}",
                path=str(self._path),
            ) from exc
        try:
            db = sqlite3.connect(
                self._path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._fault(exc, "open the store") from exc
        self._db = db
        try:
            migrated = self._open(db)
        except BaseException:
            self._db = None
            db.close()
            raise
        if migrated:
            log.info("migrated %s to store schema %d", self._path, SCHEMA_VERSION)
        self._finalizer = weakref.finalize(self, _shut, db, self._leases.token)

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r})"

    def reopen(self) -> Store:
        """A new store on the same path with the same settings (this one stays as it is)."""
        return Store(self._path, **self._options)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every lease this store holds and close the file; idempotent."""
        with self._lock:
            if self._db is not None:
                self._db = None
                self._leases.held.clear()
                self._finalizer()

    @property
    def pages_checked(self) -> bool:
        """Whether every page was checked when the store opened (else only the first ones
        of each table and index: the file was too big, or new)."""
        return self._pages_checked

    def check_pages(self) -> None:
        """Read every page of the file (SQLite's quick_check, ~1 ms per MiB) on a connection
        of its own, so that the store serves meanwhile; `StoreError` if one is corrupt.
        For a file too big to check whole when it opens, in the background."""
        uri = f"{self._path.as_uri()}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                _quick_check(db)
        except sqlite3.Error as exc:
            raise self._fault(exc, "check the store's pages") from exc

    # -- conversations -------------------------------------------------------------------

    def latest(self, namespace: str, name: str) -> str | None:
        """The id of the most recently created conversation with this name, if any."""
        with self._boundary(f"look up conversation {name!r}") as db:
            row = db.execute(
                "SELECT id FROM conversations WHERE namespace = ? AND name = ?"
                " AND owner IN (?, '') ORDER BY seq DESC LIMIT 1",
                (namespace, name, self.owner),
            ).fetchone()
        return None if row is None else str(row[0])

    def load(self, conversation_id: str) -> LoadedConversation | None:
        """Read a conversation without taking it (None if there is no such id).

        Nothing is written: an unfinished reply and "interrupted" answers to unanswered
        calls appear in the result only.
        """
        with self._transaction(f"load conversation {conversation_id}", "BEGIN") as db:
            return self._read(db, conversation_id, persist=False)

    def release(self, conversation_id: str) -> None:
        """Let go of the conversation's lease (disconnect); its rows stay."""
        self._leases.held.pop(conversation_id, None)
        with self._boundary(f"release conversation {conversation_id}") as db:
            db.execute(
                "DELETE FROM leases WHERE conversation = ? AND token = ?",
                (conversation_id, self._leases.token),
            )

    def heartbeat(self) -> list[str]:
        """Renew every lease this store holds; return the ids of those it lost (taken over)."""
        if not self._leases.held:
            return []
        with self._write("renew the conversation leases") as db:
            db.execute(
                "UPDATE leases SET heartbeat = ? WHERE token = ?",
                (time.time(), self._leases.token),
            )
            kept = {
                cid
                for (cid,) in db.execute(
                    "SELECT conversation FROM leases WHERE token = ?", (self._leases.token,)
                )
            }
        return self._leases.keep(kept)

    def delete(self, conversation_id: str, *, take_over: bool = False) -> bool:
        """Erase a conversation and every trace of its text from the file (False: no such id).

        Deleted rows are zeroed (secure_delete) and the write-ahead log is checkpointed
        and truncated; if another connection keeps reading meanwhile (past busy_timeout),
        the last copies leave the file at the next checkpoint instead. A live holder
        elsewhere gives `ConversationInUse` unless `take_over`. Cached replies recorded
        for this conversation go with it.
        """
        if not super().delete(conversation_id, take_over=take_over):
            return False
        with self._boundary("checkpoint the write-ahead log") as db:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("%s: another connection kept the log; deleted text leaves it later", self)
        return True

    # -- the reply cache -----------------------------------------------------------------

    def cache_get(self, key: str, *, scope: str | None = None) -> CachedReply | None:
        """The reply recorded under `key`, counting the hit; None if there is none.

        `scope="team"` reads the shared entries (in a file of one user's, apart by key)."""
        key = _scoped(key, scope)
        with self._boundary("read the reply cache") as db:
            row = db.execute("SELECT data FROM replies WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE replies SET hits = hits + 1, used = ? WHERE key = ?", (time.time(), key)
            )
            return _reply(row[0])

    def cache_put(
        self,
        key: str,
        reply: CachedReply,
        *,
        conversation: str | None = None,
        scope: str | None = None,
    ) -> None:
        """Record `reply` under `key`, evicting the least recently used past the bounds.

        `conversation` (the id it was recorded for) makes `delete` take the entry along; a
        team-scoped entry never names one. A reply larger than `cache_max_bytes` on its own
        is not kept.
        """
        if scope == TEAM_SCOPE:
            conversation = None
        key = _scoped(key, scope)
        with self._write("store a reply in the cache") as db:
            data = _reply_json(reply)
            size = len(data.encode())
            if self._cache_max_bytes is not None and size > self._cache_max_bytes:
                return
            db.execute(
                "INSERT INTO replies (key, bytes, used, conversation, data) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET bytes = excluded.bytes, used = excluded.used,"
                " conversation = excluded.conversation, data = excluded.data",
                (key, size, time.time(), conversation, data),
            )
            self._evict(db)

    def cache_stats(self) -> CacheStats:
        with self._boundary("read the reply cache") as db:
            entries, size, hits = db.execute(
                "SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(hits), 0) FROM replies"
            ).fetchone()
        return CacheStats(entries, size, hits)

    def cache_clear(self) -> None:
        with self._write("clear the reply cache") as db:
            db.execute("DELETE FROM replies")

    # -- inside ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _boundary(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The one place where sqlite3, JSON and decoding errors become `StoreError`."""
        with self._lock:
            db = self._db
            if db is None:
                raise StoreError(f"cannot {doing}: the store was closed", path=str(self._path))
            try:
                yield db
            except sqlite3.Error as exc:
                raise self._fault(exc, doing) from exc
            except _Unstorable as exc:
                raise StoreError(
                    f"cannot {doing}: a value is not JSON-serialisable ({exc})",
                    path=str(self._path),
                ) from exc
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreError(
                    f"cannot {doing}: the file holds a record that cannot be read "
                    f"({exc.__class__.__name__}: {exc}); it is damaged or was edited: {ADVICE}",
                    path=str(self._path),
                ) from exc

    @contextlib.contextmanager
    def _transaction(self, doing: str, begin: str) -> Iterator[sqlite3.Connection]:
        """One transaction inside the boundary, rolled back if anything fails."""
        with self._boundary(doing) as db:
            db.execute(begin)
            try:
                yield db
            except BaseException:
                _rollback(db)
                raise
            db.execute("COMMIT")

    def _write(self, doing: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction: it waits (up to busy_timeout) for other writers first."""
        return self._transaction(doing, "BEGIN IMMEDIATE")

    def _open(self, db: sqlite3.Connection) -> bool:
        """`_prepare`, tried again while another process holds the file, for up to twice
        `busy_timeout` in all: kernels starting together can meet a lock that SQLite's own
        busy wait does not cover, not only a long write."""
        deadline = time.monotonic() + 2 * self._busy_timeout
        pause = 0.01
        while True:
            try:
                with self._boundary("open the store"):
                    return self._prepare(db)
            except StoreError as exc:
                if not exc.locked or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _fault(self, exc: sqlite3.Error, doing: str) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF  # the primary of an extended code
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            why = (
                f"another process kept the store locked for more than {self._busy_timeout:g} s: "
                f"try again, stop the other kernel, or {ADVICE}"
            )
        elif code in (_SQLITE_READONLY, _SQLITE_PERM):
            why = f"the store is read-only: make the file and its directory writable, or {ADVICE}"
        elif code == _SQLITE_CANTOPEN:
            why = (
                "the file cannot be opened or created: check that its directory exists and is "
                f"writable, or {ADVICE}"
            )
        elif code == _SQLITE_FULL:
            why = f"the disk is full: free some space, or {ADVICE}"
        elif code == _SQLITE_CORRUPT:
            why = f"the file has corrupt pages ({exc}): {ADVICE}"
        elif code == _SQLITE_NOTADB:
            why = f"the file is not a readable conversation store (corrupt or not SQLite): {ADVICE}"
        elif code == _SQLITE_IOERR:
            why = f"the disk reported an I/O error ({exc}): check the disk, or {ADVICE}"
        else:
            why = f"{exc}: {ADVICE}"
        locked = code in (_SQLITE_BUSY, _SQLITE_LOCKED)
        return StoreError(f"cannot {doing}: {why}", path=str(self._path), locked=locked)

    def _prepare(self, db: sqlite3.Connection) -> bool:
        """Check the file is ours and current (migrating it if older); True if migrated."""
        db.execute("PRAGMA secure_delete = ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot open the store: it was written by a newer agentrt-jupyter (store "
                f"schema {version}; this version reads up to {SCHEMA_VERSION}): upgrade "
                f"agentrt-jupyter, or {ADVICE}",
                path=str(self._path),
            )
        had_tables = bool(self._check_tables(db, version))
        if version:
            self._check_pages(db)
        else:  # nothing yet, or an unversioned store the migration reads whole
            self._pages_checked = True
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("BEGIN IMMEDIATE")  # waits for other writers, up to busy_timeout
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another may have won
            for step in range(version, SCHEMA_VERSION):
                _MIGRATIONS[step](db)
            # Always written: in WAL mode only a real write finds a read-only file.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            _rollback(db)
            raise
        db.execute("COMMIT")
        return had_tables and version < SCHEMA_VERSION

    def _check_tables(self, db: sqlite3.Connection, version: int) -> set[str]:
        """The file's tables, if they are a store's of that version (else StoreError)."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        ours = tables >= _TABLES if version else (not tables or tables >= _V0_TABLES)
        if not ours:
            raise StoreError(
                "cannot open the store: the file is an SQLite database of something else "
                f"(tables {', '.join(sorted(tables))}): {ADVICE}",
                path=str(self._path),
            )
        return tables

    def _check_pages(self, db: sqlite3.Connection) -> None:
        """Find damaged pages before the first write does: every table's and index's first
        pages always, the whole file (`quick_check`) when it is small enough to stay within
        the load budget (`QUICK_CHECK_MAX_BYTES`; a bigger one is for `check_pages`)."""
        for kind, name, table in db.execute(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"
        ).fetchall():
            how = "NOT INDEXED" if kind == "table" else f'INDEXED BY "{name}"'
            db.execute(f'SELECT * FROM "{table}" {how} LIMIT 1').fetchall()
        if self._path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
            _quick_check(db)
            self._pages_checked = True

    def _append(
        self,
        db: sqlite3.Connection,
        conversation_id: str,
        kind: str,
        data: str,
        role: str | None = None,
        turn: int | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO records (conversation, kind, role, turn, written, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (conversation_id, kind, role, turn, time.time(), data),
        )

    def _lease(self, db: sqlite3.Connection, conversation_id: str, now: float) -> None:
        db.execute(
            "INSERT INTO leases (conversation, token, holder, pid, host, heartbeat)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (conversation) DO UPDATE SET"
            " token = excluded.token, holder = excluded.holder, pid = excluded.pid,"
            " host = excluded.host, heartbeat = excluded.heartbeat",
            (conversation_id, *self._leases.row(now)),
        )

    def _locked_name(self, db: sqlite3.Connection, conversation_id: str) -> str | None:
        row = db.execute(
            "SELECT name FROM conversations WHERE id = ? AND owner IN (?, '')",
            (conversation_id, self.owner),
        ).fetchone()
        return None if row is None else str(row[0])

    def _lease_of(self, db: sqlite3.Connection, conversation_id: str) -> Sequence[Any] | None:
        lease: Sequence[Any] | None = db.execute(
            "SELECT token, holder, pid, host, heartbeat FROM leases WHERE conversation = ?",
            (conversation_id,),
        ).fetchone()
        return lease

    def _renew(self, db: sqlite3.Connection, conversation_id: str) -> None:
        renewed = db.execute(
            "UPDATE leases SET heartbeat = ? WHERE conversation = ? AND token = ?",
            (time.time(), conversation_id, self._leases.token),
        ).rowcount
        if renewed:
            return
        found = db.execute(
            "SELECT c.name, l.holder FROM conversations c"
            " LEFT JOIN leases l ON l.conversation = c.id WHERE c.id = ?",
            (conversation_id,),
        ).fetchone()
        raise self._leases.lost(conversation_id, found, str(self._path))

    def _evict(self, db: sqlite3.Connection) -> None:
        """Drop the least recently used replies until the cache is within its bounds."""
        entries, size = db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM replies"
        ).fetchone()

        def over() -> bool:
            return (self._cache_max_entries is not None and entries > self._cache_max_entries) or (
                self._cache_max_bytes is not None and size > self._cache_max_bytes
            )

        victims: list[tuple[str]] = []
        oldest = db.execute("SELECT key, bytes FROM replies ORDER BY used")
        while over():
            key, length = oldest.fetchone()
            victims.append((key,))
            entries, size = entries - 1, size - length
        oldest.close()
        db.executemany("DELETE FROM replies WHERE key = ?", victims)

    def _settings_text(self, db: sqlite3.Connection, conversation_id: str) -> str | None:
        row = db.execute(
            "SELECT data FROM records WHERE conversation = ? AND kind = 'settings'"
            " ORDER BY seq DESC LIMIT 1",
            (conversation_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def _rows(self, db: sqlite3.Connection, conversation_id: str) -> ConversationRows | None:
        row = db.execute(
            "SELECT namespace, name FROM conversations WHERE id = ? AND owner IN (?, '')",
            (conversation_id, self.owner),
        ).fetchone()
        if row is None:
            return None
        (cleared,) = db.execute(
            "SELECT coalesce(max(seq), 0) FROM records WHERE conversation = ? AND kind = 'cleared'",
            (conversation_id,),
        ).fetchone()
        (turn_seq,) = db.execute(
            "SELECT coalesce(max(turn), 0) FROM records WHERE conversation = ?",
            (conversation_id,),
        ).fetchone()
        messages = [
            _message(data)
            for (data,) in db.execute(
                "SELECT data FROM records WHERE conversation = ? AND kind = 'message'"
                " AND seq > ? ORDER BY seq",
                (conversation_id, cleared),
            )
        ]
        ledger = [
            _ledger_entry(data)
            for (data,) in db.execute(
                "SELECT data FROM records WHERE conversation = ? AND kind = 'ledger' ORDER BY seq",
                (conversation_id,),
            )
        ]
        draft = db.execute(
            "SELECT data FROM drafts WHERE conversation = ?", (conversation_id,)
        ).fetchone()
        return ConversationRows(
            row[0], row[1], messages, ledger, None if draft is None else draft[0], turn_seq
        )

    def _erase(self, db: sqlite3.Connection, table: str, column: str, conversation_id: str) -> None:
        db.execute(f"DELETE FROM {table} WHERE {column} = ?", (conversation_id,))

    def _insert_conversation(
        self, db: sqlite3.Connection, conversation_id: str, namespace: str, name: str, now: float
    ) -> None:
        db.execute(
            "INSERT INTO conversations (id, namespace, name, created, owner)"
            " VALUES (?, ?, ?, ?, ?)",
            (conversation_id, namespace, name, now, self.owner),
        )

    def _listing(self, db: sqlite3.Connection, namespace: str | None) -> list[Sequence[Any]]:
        return list(db.execute(_LISTING, (namespace, self.owner)).fetchall())

    def _put_draft(self, db: sqlite3.Connection, conversation_id: str, data: str) -> None:
        db.execute(
            "INSERT OR REPLACE INTO drafts (conversation, written, data) VALUES (?, ?, ?)",
            (conversation_id, time.time(), data),
        )

    def _drop_draft(self, db: sqlite3.Connection, conversation_id: str) -> None:
        db.execute("DELETE FROM drafts WHERE conversation = ?", (conversation_id,))


def _create_v1(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        db.execute(statement)


def _migrate_v0(db: sqlite3.Connection) -> None:
    """A new file, or the unversioned store (one row per name, messages by position), to 1.

    Each old name becomes one conversation in DEFAULT_NAMESPACE, created at its last
    update; its messages keep their order, its ledger rows theirs; the old tables go.
    """
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    _create_v1(db)
    if not tables >= _V0_TABLES:
        return
    agents = {
        name: (settings, updated)
        for name, settings, updated in db.execute("SELECT name, settings, updated FROM agents")
    }
    names = list(agents)
    for (name,) in db.execute("SELECT agent FROM messages UNION SELECT agent FROM ledger"):
        if name not in agents:
            names.append(name)
    now = time.time()
    for name in sorted(names, key=lambda n: str(agents.get(n, ("", "~"))[1])):
        settings, updated = agents.get(name, ("{}", None))
        when = datetime.fromisoformat(updated).replace(tzinfo=UTC).timestamp() if updated else now
        cid = secrets.token_hex(8)
        db.execute(
            "INSERT INTO conversations (id, namespace, name, created) VALUES (?, ?, ?, ?)",
            (cid, DEFAULT_NAMESPACE, name, when),
        )
        rows: list[tuple[str, str | None, int | None, str]] = [
            ("settings", None, None, _dumps(json.loads(settings)))
        ]
        for role, parts, turn, stamp, status, usage, model, finish in db.execute(
            "SELECT role, parts, turn, time, status, usage, model, finish_reason FROM messages"
            " WHERE agent = ? ORDER BY position",
            (name,),
        ):
            message = ConversationMessage(
                role, tuple(part_from_json(p) for p in json.loads(parts)), turn,
                datetime.fromisoformat(stamp), status,
                None if usage is None else Usage(**json.loads(usage)), model, finish,
            )  # fmt: skip
            rows.append(("message", role, turn, _message_json(message)))
        for (text,) in db.execute("SELECT row FROM ledger WHERE agent = ? ORDER BY rowid", (name,)):
            entry = _ledger_entry(text)
            rows.append(("ledger", None, entry.turn, _ledger_json(entry)))
        db.executemany(
            "INSERT INTO records (conversation, kind, role, turn, written, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(cid, kind, role, turn, when, data) for kind, role, turn, data in rows],
        )
    for table in sorted(_V0_TABLES):
        db.execute(f"DROP TABLE {table}")


def _migrate_v1(db: sqlite3.Connection) -> None:
    """1 to 2: conversations get their owner; those from before have none ('': shown to
    whoever uses the file, as they were)."""
    db.execute("ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT ''")


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _migrate_v0, 1: _migrate_v1}
"""Step `n` takes a file from `user_version` n to n + 1, inside the opening transaction."""
