"""What the recorder, the registry and `map` need of a store, and the choice between the two.

`ConversationStore` is the interface: SQLite (`agentrt_jupyter.store.Store`, one file per
home directory, the default) and PostgreSQL (`agentrt_jupyter.stores.postgres.PgStore`,
for a team on a hub) implement it with the same semantics, which
tests/test_store_contract.py proves against both. `ResultsStore` is the same for `map`'s
results tables. Both raise only `StoreError` (and `ConversationInUse` for a lease).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ..conversation import ConversationMessage, LedgerEntry
from ..store import TEAM_SCOPE, CachedReply, CacheStats
from .journal import LoadedConversation, StoredConversation

__all__ = ["OPEN_JOB", "TEAM_SCOPE", "ConversationStore", "ResultsStore", "StoredRow"]

OPEN_JOB = "open"
"""The state of a Batch API job whose results were not collected yet."""


class ConversationStore(Protocol):
    """Append-only conversations under writer leases, and the reply cache."""

    holder: str

    @property
    def held(self) -> tuple[str, ...]:
        """The ids of the conversations this store holds the lease of."""
        ...

    @property
    def pages_checked(self) -> bool:
        """Whether the whole store was checked for damage when it opened."""
        ...

    def check_pages(self) -> None: ...

    def create(self, namespace: str, name: str, settings: Mapping[str, Any]) -> str: ...

    def latest(self, namespace: str, name: str) -> str | None: ...

    def conversations(self, namespace: str | None = None) -> list[StoredConversation]: ...

    def load(self, conversation_id: str) -> LoadedConversation | None: ...

    def open(
        self, conversation_id: str, *, take_over: bool = False
    ) -> LoadedConversation | None: ...

    def claim(self, conversation_id: str) -> bool: ...

    def release(self, conversation_id: str) -> None: ...

    def heartbeat(self) -> list[str]: ...

    def delete(self, conversation_id: str, *, take_over: bool = False) -> bool: ...

    def append_message(self, conversation_id: str, message: ConversationMessage) -> None: ...

    def checkpoint(self, conversation_id: str, message: ConversationMessage) -> None: ...

    def append_ledger(self, conversation_id: str, entry: LedgerEntry) -> None: ...

    def save_settings(self, conversation_id: str, settings: Mapping[str, Any]) -> None: ...

    def clear(self, conversation_id: str) -> None: ...

    def cache_get(self, key: str, *, scope: str | None = None) -> CachedReply | None:
        """The reply under `key` in `scope` (None: the user's own; `TEAM_SCOPE`: shared)."""
        ...

    def cache_put(
        self,
        key: str,
        reply: CachedReply,
        *,
        conversation: str | None = None,
        scope: str | None = None,
    ) -> None: ...

    def cache_stats(self) -> CacheStats: ...

    def cache_clear(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoredRow:
    """What is kept of a finished row."""

    text: str
    tokens_in: int
    tokens_out: int
    latency: float
    attempts: int
    model: str

    def to_json(self) -> str:
        """The row as both results stores keep it."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StoredRow:
        return cls(**json.loads(text))


class ResultsStore(Protocol):
    """The results tables: `RowStore` here, `stores.pgrows.PgRowStore` on PostgreSQL."""

    def get(self, run: str, row: str) -> StoredRow | None: ...

    def put(self, run: str, row: str, stored: StoredRow) -> None: ...

    def count(self, run: str) -> int: ...

    def open_jobs(self, run: str) -> list[str]: ...

    def add_job(self, run: str, job: str) -> None: ...

    def close_job(self, job: str, state: str) -> None: ...

    def close(self) -> None: ...
