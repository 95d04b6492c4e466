"""Which store a location names: a `postgresql://` URL is PostgreSQL, anything else a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ConversationStore, ResultsStore

URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: str | Path | None) -> bool:
    """Whether `location` is a PostgreSQL URL (not a path to an SQLite file)."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def open_store_at(location: str | Path, **options: Any) -> ConversationStore:
    """The conversation store at `location`: `PgStore` for a URL, else the SQLite `Store`
    (options are the chosen class's keyword arguments). `StoreError` if it cannot open."""
    if is_database_url(location):
        from .postgres import PgStore

        return PgStore(str(location), **options)
    from ..store import Store

    return Store(location, **options)


def open_results(location: str | Path, **options: Any) -> ResultsStore:
    """`map`'s results tables at `location`: in the PostgreSQL database, or an SQLite file."""
    if is_database_url(location):
        from .pgrows import PgRowStore

        return PgRowStore(str(location), **options)
    from ..batch.records import RowStore

    return RowStore(Path(location), **options)
