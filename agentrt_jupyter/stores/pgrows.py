"""`map`'s results tables (finished rows, Batch API jobs) in the PostgreSQL store, per owner.

The same operations as the SQLite `batch.records.RowStore`, on `agentrt.map_rows` and
`agentrt.map_jobs` (made by pg_setup.sql, under the same row-level security). psycopg
errors become `StoreError`; the URL in messages never shows the password.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import StoreError
from .base import OPEN_JOB, StoredRow
from .pgstore import PgStore

if TYPE_CHECKING:
    import psycopg


class PgRowStore:
    """The results tables in the database at `url` (its schema made if missing)."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self._store = PgStore(url, connect_timeout=connect_timeout)  # schema, owner, boundary
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PgRowStore({self._store.location!r})"

    @contextlib.contextmanager
    def _boundary(self, doing: str) -> Iterator[psycopg.Connection]:
        with self._lock, self._store._boundary(doing) as conn:
            yield conn

    @property
    def owner(self) -> str:
        return self._store.owner

    def get(self, run: str, row: str) -> StoredRow | None:
        with self._boundary("read a map row") as conn:
            found = conn.execute(
                "SELECT data FROM agentrt.map_rows WHERE owner = %s AND run = %s AND row = %s",
                (self.owner, run, row),
            ).fetchone()
            return None if found is None else StoredRow.from_json(found[0])

    def put(self, run: str, row: str, stored: StoredRow) -> None:
        data = stored.to_json()
        with self._boundary("write a map row") as conn:
            conn.execute(
                "INSERT INTO agentrt.map_rows (owner, run, row, written, data)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, run, row) DO UPDATE SET"
                " written = excluded.written, data = excluded.data",
                (self.owner, run, row, time.time(), data),
            )

    def count(self, run: str) -> int:
        with self._boundary("count map rows") as conn:
            found = conn.execute(
                "SELECT count(*) FROM agentrt.map_rows WHERE owner = %s AND run = %s",
                (self.owner, run),
            ).fetchone()
            return 0 if found is None else int(found[0])

    def open_jobs(self, run: str) -> list[str]:
        with self._boundary("read the batch jobs") as conn:
            rows = conn.execute(
                "SELECT job FROM agentrt.map_jobs WHERE owner = %s AND run = %s AND state = %s"
                " ORDER BY created",
                (self.owner, run, OPEN_JOB),
            ).fetchall()
            return [str(r[0]) for r in rows]

    def add_job(self, run: str, job: str) -> None:
        with self._boundary("record a batch job") as conn:
            conn.execute(
                "INSERT INTO agentrt.map_jobs (owner, run, job, created, state)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, job) DO UPDATE SET"
                " run = excluded.run, created = excluded.created, state = excluded.state",
                (self.owner, run, job, time.time(), OPEN_JOB),
            )

    def close_job(self, job: str, state: str) -> None:
        with self._boundary("record a batch job's end") as conn:
            conn.execute(
                "UPDATE agentrt.map_jobs SET state = %s WHERE owner = %s AND job = %s",
                (state, self.owner, job),
            )

    def close(self) -> None:
        self._store.close()


__all__ = ["PgRowStore", "StoreError"]
