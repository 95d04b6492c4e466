"""The results table: every finished row of every map run, so a re-run redoes only the
missing rows.

Two tables beside the conversation store's own, in the runtime's store file (or in a file
of their own, or in memory for a runtime without a store):

    map_rows (run, row, written, data)   one successful row: its reply, tokens, latency
    map_jobs (run, job, created, state)  the Batch API jobs a run submitted

`run` is the run's key and `row` the hash of the row's prompt (see `plan`). A row is
written in its own transaction as soon as it finishes, so a killed process loses only
the rows in flight; a refreshed row replaces the one before. The connection is our own
(WAL, a busy timeout), used only from the runtime thread; every sqlite3 error becomes a
`StoreError` naming the file. `RunResults` is one run's side of it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..stores.base import OPEN_JOB, ResultsStore, StoredRow
from ..stores.opening import is_database_url

__all__ = ["OPEN_JOB", "ResultsStore", "RowStore", "RunResults", "StoredRow", "open_results"]

log = logging.getLogger("agentrt_jupyter")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS map_rows (
      run TEXT NOT NULL, row TEXT NOT NULL, written REAL NOT NULL, data TEXT NOT NULL,
      PRIMARY KEY (run, row)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS map_jobs (
      run TEXT NOT NULL, job TEXT NOT NULL PRIMARY KEY, created REAL NOT NULL,
      state TEXT NOT NULL)""",
)


class RowStore:
    """The results tables in one SQLite file (`path`), or in memory (`path=None`)."""

    def __init__(self, path: Path | None, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._where = str(path) if path is not None else "memory"
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                ":memory:" if path is None else path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the map results: {exc}", path=self._where) from exc
        self._db: sqlite3.Connection | None = db
        with self._boundary("prepare the map results tables") as prepared:
            prepared.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if path is not None:
                prepared.execute("PRAGMA journal_mode = WAL")
                prepared.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                prepared.execute(statement)

    def __repr__(self) -> str:
        return f"RowStore({self._where!r})"

    @contextlib.contextmanager
    def _boundary(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db
            if db is None:
                raise StoreError(f"cannot {doing}: the results store was closed", path=self._where)
            try:
                yield db
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {doing}: {exc}", path=self._where) from exc
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreError(
                    f"cannot {doing}: a stored row cannot be read ({exc}); the file is damaged",
                    path=self._where,
                ) from exc

    def get(self, run: str, row: str) -> StoredRow | None:
        with self._boundary("read a map row") as db:
            found = db.execute(
                "SELECT data FROM map_rows WHERE run = ? AND row = ?", (run, row)
            ).fetchone()
            return None if found is None else StoredRow.from_json(found[0])

    def put(self, run: str, row: str, stored: StoredRow) -> None:
        data = stored.to_json()
        with self._boundary("write a map row") as db:
            db.execute(
                "INSERT OR REPLACE INTO map_rows (run, row, written, data) VALUES (?, ?, ?, ?)",
                (run, row, time.time(), data),
            )

    def count(self, run: str) -> int:
        with self._boundary("count map rows") as db:
            return int(
                db.execute("SELECT count(*) FROM map_rows WHERE run = ?", (run,)).fetchone()[0]
            )

    def open_jobs(self, run: str) -> list[str]:
        """The Batch API jobs of `run` whose results were not collected yet, oldest first."""
        with self._boundary("read the batch jobs") as db:
            rows = db.execute(
                "SELECT job FROM map_jobs WHERE run = ? AND state = ? ORDER BY created",
                (run, OPEN_JOB),
            ).fetchall()
            return [r[0] for r in rows]

    def add_job(self, run: str, job: str) -> None:
        with self._boundary("record a batch job") as db:
            db.execute(
                "INSERT OR REPLACE INTO map_jobs (run, job, created, state) VALUES (?, ?, ?, ?)",
                (run, job, time.time(), OPEN_JOB),
            )

    def close_job(self, job: str, state: str) -> None:
        with self._boundary("record a batch job's end") as db:
            db.execute("UPDATE map_jobs SET state = ? WHERE job = ?", (state, job))

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()


def open_results(location: str | Path, **options: Any) -> ResultsStore:
    """The results tables at `location`: in the PostgreSQL database for a URL (`PgRowStore`),
    else in the SQLite file."""
    if is_database_url(location):
        from ..stores.pgrows import PgRowStore

        return PgRowStore(str(location), **options)
    return RowStore(Path(location), **options)


class RunResults:
    """One run's side of the results table: its rows by key and its Batch API jobs.

    A store fault is logged once and ends the keeping (the run goes on; a re-run redoes
    the rows not kept): lookups then find nothing and writes are dropped. The run closes
    the store at its end if it owns it."""

    def __init__(self, store: ResultsStore, run: str, *, owned: bool) -> None:
        self._store: ResultsStore | None = store
        self.run = run
        self._owned = owned

    def get(self, row: str) -> StoredRow | None:
        store = self._store
        if store is None:
            return None
        try:
            return store.get(self.run, row)
        except StoreError as exc:
            self._failed(exc)
            return None

    def put(self, row: str, stored: StoredRow) -> None:
        store = self._store
        if store is None:
            return
        try:
            store.put(self.run, row, stored)
        except StoreError as exc:
            self._failed(exc)

    def open_jobs(self) -> list[str]:
        """The run's Batch API jobs not collected yet, oldest first (none without a store)."""
        store = self._store
        return [] if store is None else store.open_jobs(self.run)

    def add_job(self, job: str) -> None:
        """Record a submitted job; a fault here is ignored (the job's rows still come back)."""
        store = self._store
        if store is not None:
            with contextlib.suppress(Exception):
                store.add_job(self.run, job)

    def close_job(self, job: str, state: str) -> None:
        store = self._store
        if store is not None and state != OPEN_JOB:
            with contextlib.suppress(Exception):
                store.close_job(job, state)

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None and self._owned:
            store.close()

    def _failed(self, problem: StoreError) -> None:
        log.warning("map results are no longer kept (a re-run will redo these rows): %s", problem)
        self.close()
