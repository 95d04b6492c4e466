"""A store file with corrupt pages: moved aside, and what still reads copied into a fresh one.

SQLite's recovery (the CLI's `.recover`, the recovery extension) is not in Python's
sqlite3, so this copies table by table, row by row in rowid order, stepping over what
raises: the rows of a damaged page are lost, those of every readable page are kept, and
a row whose JSON no longer parses is dropped. Only a file that is recognisably a store
(its schema reads and has the store's tables) is touched; anything else stays where it
is, and the runtime goes on without a store.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import StoreError
from .store import ADVICE, Store, damaged

_COPIED = {  # table: its columns, in the order of the fresh file's INSERT
    "conversations": ("seq", "id", "namespace", "name", "created", "owner"),
    "records": ("seq", "conversation", "kind", "role", "turn", "written", "data"),
    "drafts": ("conversation", "written", "data"),
    "replies": ("key", "bytes", "used", "hits", "conversation", "data"),
}
_LAST_ROWID = 2**63 - 1
RECOVERED_NAMESPACE = "recovered"
"""Where a recovered conversation that lost its name is kept (as `recovered-<id>`)."""


@dataclass(frozen=True, slots=True)
class StoreRecovery:
    """What was done about a damaged store: where the damaged file went, what was kept."""

    path: Path
    aside: Path
    damage: str
    conversations: int
    unnamed: int
    """Of the conversations, those kept as `recovered-<id>` (their name was lost)."""
    records: int

    def __str__(self) -> str:
        kept = f"{self.conversations} conversation{'' if self.conversations == 1 else 's'}"
        if self.unnamed:
            kept += (
                f" ({self.unnamed} without their name, listed as 'recovered-<id>' in "
                f"namespace {RECOVERED_NAMESPACE!r})"
            )
        return (
            f"the conversation store {self.path} was damaged ({self.damage}): recovered "
            f"{kept} into a fresh store; the damaged file is kept as {self.aside}"
        )


def open_store(
    path: str | Path, *, holder: str = "python", busy_timeout: float = 5.0
) -> tuple[Store, StoreRecovery | None]:
    """`Store(path, ...)`; a file found with corrupt pages is recovered first (and how).

    Raises `StoreError` if the file cannot be used and is not a damaged store."""
    try:
        return Store(path, holder=holder, busy_timeout=busy_timeout), None
    except StoreError as problem:
        recovery = recover(Path(problem.path or path), problem)
        if recovery is None:
            raise
    return Store(path, holder=holder, busy_timeout=busy_timeout), recovery


def recover(path: Path, problem: StoreError) -> StoreRecovery | None:
    """Move the damaged store at `path` aside and copy what reads into a fresh file there.

    None if `problem` is no page damage or the file is not recognisably a store (nothing
    is moved then); `StoreError` if the file cannot be moved or the fresh one written."""
    if not damaged(problem) or not _is_a_damaged_store(path):
        return None
    aside = _aside(path)
    try:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    except OSError as exc:
        raise StoreError(
            f"the file has corrupt pages and cannot be moved aside ({exc.strerror}): {ADVICE}",
            path=str(path),
        ) from exc
    Store(path).close()  # the fresh file, with the current schema
    try:
        with (
            contextlib.closing(_read_only(aside)) as source,
            contextlib.closing(sqlite3.connect(path, isolation_level=None)) as fresh,
        ):
            conversations, unnamed, records = _copy(source, fresh)
    except sqlite3.Error as exc:
        raise StoreError(
            f"cannot write the recovered store ({exc}): {ADVICE}", path=str(path)
        ) from exc
    damage = str(problem.__cause__)
    return StoreRecovery(path, aside, damage, conversations, unnamed, records)


def _is_a_damaged_store(path: Path) -> bool:
    """Whether the file now at `path` has the store's tables and corrupt pages (another
    kernel may have recovered it into a sound one since the damage was met)."""
    try:
        with contextlib.closing(_read_only(path)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if not {row[0] for row in rows} >= set(_COPIED):
                return False
            try:
                (verdict,) = db.execute("PRAGMA quick_check(1)").fetchone()
            except sqlite3.DatabaseError:
                return True
            return bool(verdict != "ok")
    except sqlite3.Error:
        return False


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)


def _aside(path: Path) -> Path:
    """`<name>.corrupt-<local time>`, not yet taken."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while any(Path(f"{aside}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        number += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    return aside


def _copy(source: sqlite3.Connection, fresh: sqlite3.Connection) -> tuple[int, int, int]:
    """Every readable row of the conversations' tables (leases are not kept: nobody
    writes the damaged file any more); how many conversations came over (and how many of
    them without their name), how many records."""
    fresh.execute("BEGIN IMMEDIATE")
    kept: set[str] = set()
    unnamed = 0
    counts = dict.fromkeys(_COPIED, 0)
    for table, wanted in _COPIED.items():
        present = {row[1] for row in source.execute(f"PRAGMA table_info({table})")}
        columns = tuple(column for column in wanted if column in present)  # older schemas
        insert = (
            f"INSERT OR IGNORE INTO {table} ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(columns))})"
        )
        for row in _readable_rows(source, table, columns):
            values = dict(zip(columns, row, strict=True))
            if not _parses(values.get("data", "{}")):
                continue
            if table != "conversations" and values["conversation"] not in kept:
                if table == "replies":
                    values["conversation"] = None
                elif isinstance(values["conversation"], str):  # its row was on a damaged page
                    _name_lost(fresh, values["conversation"], values["written"])
                    kept.add(values["conversation"])
                    counts["conversations"] += 1
                    unnamed += 1
                else:
                    continue
            with contextlib.suppress(sqlite3.IntegrityError):  # a value the damage changed
                counts[table] += fresh.execute(insert, tuple(values.values())).rowcount
                if table == "conversations":
                    kept.add(str(values["id"]))
    fresh.execute("COMMIT")
    return counts["conversations"], unnamed, counts["records"]


def _name_lost(fresh: sqlite3.Connection, conversation: str, written: object) -> None:
    """A conversation whose rows read but whose own row (its namespace and name) did not:
    kept as `recovered-<id>` in the namespace `RECOVERED_NAMESPACE`."""
    fresh.execute(
        "INSERT INTO conversations (id, namespace, name, created) VALUES (?, ?, ?, ?)",
        (conversation, RECOVERED_NAMESPACE, f"recovered-{conversation}", written),
    )


def _parses(data: object) -> bool:
    if not isinstance(data, str):
        return False
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _readable_rows(
    db: sqlite3.Connection, table: str, columns: tuple[str, ...]
) -> Iterator[tuple[object, ...]]:
    """The rows of `table` in rowid order, stepping over the ranges that raise."""
    select = (
        f"SELECT rowid, {', '.join(columns)} FROM {table} NOT INDEXED"
        " WHERE rowid >= ? ORDER BY rowid"
    )
    start: int | None = 0
    while start is not None:
        last = start  # past it at least, if reading fails at once
        try:
            for rowid, *values in db.execute(select, (start,)):
                last = rowid
                yield tuple(values)
            return
        except sqlite3.DatabaseError:
            start = _next_readable(db, table, last)


def _next_readable(db: sqlite3.Connection, table: str, bad: int) -> int | None:
    """The first rowid past `bad` from which reading works again (None: none does).

    Seeks ever further past the damage, then back by halves to where it ends."""

    def first_from(rowid: int) -> int:
        row = db.execute(
            f"SELECT rowid FROM {table} NOT INDEXED WHERE rowid >= ? ORDER BY rowid LIMIT 1",
            (rowid,),
        ).fetchone()
        return _LAST_ROWID + 1 if row is None else int(row[0])

    failing, step = bad, 1
    while True:
        probe = min(bad + step, _LAST_ROWID)
        try:
            found = first_from(probe)
            break
        except sqlite3.DatabaseError:
            if probe == _LAST_ROWID:
                return None
            failing, step = probe, step * 2
    while probe - failing > 1:
        middle = (failing + probe) // 2
        try:
            found = first_from(middle)
            probe = middle
        except sqlite3.DatabaseError:
            failing = middle
    return None if found > _LAST_ROWID else found
