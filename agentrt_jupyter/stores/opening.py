"""Which store a location names: a `postgresql://` URL is PostgreSQL, anything else a file.

(`batch.records.open_results` chooses the same way for `map`'s results tables.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import StoreError
from .base import ConversationStore

URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: str | Path | None) -> bool:
    """Whether `location` is a PostgreSQL URL (not a path to an SQLite file)."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def open_store_at(location: str | Path, **options: Any) -> ConversationStore:
    """The conversation store at `location`: `PgStore` for a URL, else the SQLite `Store`
    (options are the chosen class's keyword arguments). `StoreError` if it cannot open."""
    if is_database_url(location):
        try:
            from .pgstore import PgStore
        except ImportError as exc:  # psycopg missing
            raise StoreError(
                f"a PostgreSQL store needs psycopg ({exc}): pip install 'agentrt-jupyter[postgres]'"
            ) from exc
        return PgStore(str(location), **options)
    from ..store import Store

    return Store(location, **options)
