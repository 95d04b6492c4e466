"""How agents' conversations are kept: `StoreRecorder` over the store, `NullRecorder` without.

The agent writes through a `Recorder` and never sees the store. Store faults are already
`StoreError`s (the store's `_boundary` makes them); here a fault during a turn becomes
that turn's `TurnStoreError`, and a store fault means "carry on without the store, say
so once". A second store implementation (PostgreSQL) plugs in behind this interface.
The reply cache lives here too: in the store, or in memory (bounded) without one.
A database store (PostgreSQL) that went away is tried again, no sooner than its backoff,
when an agent is created or the leases are renewed; the conversations that were live
during the outage stay unstored (a gap would corrupt them), new ones are stored again.
A store whose pages turn out corrupt mid-session (a file too big to check whole when it
opened is checked in the background) is recovered into a fresh file (see `salvage`), and
the write that found it is done again there.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .config import AgentConfig
from .conversation import ConversationMessage, LedgerEntry
from .errors import ConversationInUse, StoreError, TurnStoreError
from .salvage import StoreRecovery, recover
from .store import STORED_SETTINGS, CachedReply, Store, damaged
from .stores.base import ConversationStore

log = logging.getLogger("agentrt_jupyter")
T = TypeVar("T")
MEMORY_CACHE_ENTRIES = 1_000
"""The reply cache's bound when there is no store to keep it."""


def stored_settings(config: AgentConfig) -> dict[str, Any]:
    """The agent settings a conversation keeps (the key never among them)."""
    settings = {k: getattr(config, k) for k in STORED_SETTINGS}
    settings["stop_sequences"] = list(settings["stop_sequences"])
    return settings


def _turn_error(problem: StoreError | ConversationInUse) -> TurnStoreError:
    return problem if isinstance(problem, TurnStoreError) else TurnStoreError(problem)


class Recorder(Protocol):
    """Where conversations and recorded replies go; writes take a conversation id."""

    @property
    def store(self) -> ConversationStore | None:
        """The store while it works (None without one, or after a fault)."""
        ...

    @property
    def problem(self) -> StoreError | None:
        """Why conversations are not stored, if the store failed."""
        ...

    @property
    def recovery(self) -> StoreRecovery | None:
        """The store file's last recovery from corrupt pages, if it needed one."""
        ...

    def repair(self, problem: StoreError) -> bool:
        """After `problem` from the store: if it was corrupt pages, recover the file into a
        fresh one and go on with it (True); else, or if that fails, False."""
        ...

    def create(self, namespace: str, name: str, config: AgentConfig) -> str | None:
        """A new stored conversation for a named agent (its writer lease held); its id."""
        ...

    def message(self, conversation: str, message: ConversationMessage) -> None: ...

    def ledger(self, conversation: str, entry: LedgerEntry) -> None: ...

    def checkpoint(self, conversation: str, message: ConversationMessage) -> None:
        """Keep the reply streamed so far: a crash loses at most what came since."""
        ...

    def settings(self, conversation: str, config: AgentConfig) -> None: ...

    def turn_failed(self, problem: StoreError | ConversationInUse) -> TurnStoreError:
        """The error of a turn whose record failed; a store fault (not a take-over by
        another kernel) also means carrying on without the store, said once."""
        ...

    def cached(self, key: str, scope: str | None = None) -> CachedReply | None:
        """The reply recorded under `key`: the user's own, or the team's (`TEAM_SCOPE`)."""
        ...

    def cache(
        self, key: str, reply: CachedReply, conversation: str | None, scope: str | None = None
    ) -> None: ...

    def reconnect(self) -> bool:
        """After a database store went away: whether it is back (tried no sooner than its
        backoff). Conversations written before stay unstored; new ones are stored."""
        ...

    def cache_stats(self) -> dict[str, int]: ...

    def cache_clear(self) -> None: ...

    def close(self) -> None: ...


class NullRecorder:
    """No store: nothing is written; recorded replies are kept in memory (the newest
    `MEMORY_CACHE_ENTRIES`)."""

    def __init__(self, problem: StoreError | None = None) -> None:
        self._problem = problem
        self._replies: collections.OrderedDict[str, CachedReply] = collections.OrderedDict()
        self._hits = 0

    @property
    def store(self) -> ConversationStore | None:
        return None

    @property
    def problem(self) -> StoreError | None:
        return self._problem

    @property
    def recovery(self) -> StoreRecovery | None:
        return None

    def repair(self, problem: StoreError) -> bool:
        return False

    def create(self, namespace: str, name: str, config: AgentConfig) -> str | None:
        return None

    def message(self, conversation: str, message: ConversationMessage) -> None:
        pass

    def ledger(self, conversation: str, entry: LedgerEntry) -> None:
        pass

    def checkpoint(self, conversation: str, message: ConversationMessage) -> None:
        pass

    def settings(self, conversation: str, config: AgentConfig) -> None:
        pass

    def turn_failed(self, problem: StoreError | ConversationInUse) -> TurnStoreError:
        return _turn_error(problem)

    def cached(self, key: str, scope: str | None = None) -> CachedReply | None:
        key = f"{scope}/{key}" if scope else key
        reply = self._replies.get(key)
        if reply is not None:
            self._replies.move_to_end(key)
            self._hits += 1
        return reply

    def cache(
        self, key: str, reply: CachedReply, conversation: str | None, scope: str | None = None
    ) -> None:
        self._replies[f"{scope}/{key}" if scope else key] = reply
        while len(self._replies) > MEMORY_CACHE_ENTRIES:
            self._replies.popitem(last=False)

    def cache_stats(self) -> dict[str, int]:
        size = sum(len(repr(r.parts)) for r in self._replies.values())
        return {"entries": len(self._replies), "bytes": size, "hits": self._hits}

    def cache_clear(self) -> None:
        self._replies.clear()

    def reconnect(self) -> bool:
        return False

    def close(self) -> None:
        pass


class StoreRecorder:
    """Writes to a `Store`; after a store fault, carries on as a `NullRecorder`.

    `recovery` says how the file was recovered when it was opened, if it was. A file too
    big to check whole when it opened is checked on a thread (`page_check`, its damage
    or None); damage found there is recovered at the next write."""

    def __init__(self, store: ConversationStore, recovery: StoreRecovery | None = None) -> None:
        self._store: ConversationStore | None = store
        self._away: ConversationStore | None = None
        """A database store that went away, to reconnect to."""
        self._unstored: set[str] = set()
        """Conversations live when the store went away: not written after it is back."""
        self._without = NullRecorder()
        self._recovery = recovery
        self.page_check: concurrent.futures.Future[StoreError | None] = concurrent.futures.Future()
        self._checked = store
        if not store.pages_checked:
            threading.Thread(
                target=self._check_pages, args=(store,), name="store-page-check", daemon=True
            ).start()
        else:
            self.page_check.set_result(None)

    def _check_pages(self, store: ConversationStore) -> None:
        try:
            store.check_pages()
        except StoreError as problem:
            self.page_check.set_result(problem if damaged(problem) else None)
        else:
            self.page_check.set_result(None)

    @property
    def store(self) -> ConversationStore | None:
        return self._store

    @property
    def problem(self) -> StoreError | None:
        return self._without.problem

    @property
    def recovery(self) -> StoreRecovery | None:
        return self._recovery

    def repair(self, problem: StoreError) -> bool:
        store = self._store
        if not isinstance(store, Store) or not damaged(problem):
            return False
        held = store.held
        with contextlib.suppress(StoreError):
            store.close()
        try:
            recovery = recover(store.path, problem)
            fresh = store.reopen()  # the recovered file, or a sound one another kernel made
            for conversation in held:  # the live agents go on writing theirs
                fresh.claim(conversation)
        except StoreError as failed:
            self._fail(failed)
            return False
        if recovery is None:
            log.warning("%s; going on with the sound file now at its place", problem)
        else:
            log.warning("%s", recovery)
            self._recovery = recovery
        self._store = fresh
        return True

    def _do(self, write: Callable[[ConversationStore], T]) -> T | None:
        """`write` on the store (None without one), again on the recovered file if it
        found corrupt pages."""
        found = self.page_check.result() if self.page_check.done() else None
        if found is not None and self._store is self._checked:
            self.repair(found)  # if it cannot be, the recorder goes on without the store
        store = self._store
        if store is None:
            return None
        try:
            return write(store)
        except StoreError as problem:
            if not self.repair(problem):
                raise
        return None if self._store is None else write(self._store)

    def create(self, namespace: str, name: str, config: AgentConfig) -> str | None:
        """The new conversation's id; None (unstored) if the store broke irreparably here."""
        self.reconnect()
        try:
            return self._do(lambda store: store.create(namespace, name, stored_settings(config)))
        except StoreError as problem:
            if not damaged(problem):
                raise
            return None

    def message(self, conversation: str, message: ConversationMessage) -> None:
        if conversation not in self._unstored:
            self._do(lambda store: store.append_message(conversation, message))

    def ledger(self, conversation: str, entry: LedgerEntry) -> None:
        if conversation not in self._unstored:
            self._do(lambda store: store.append_ledger(conversation, entry))

    def checkpoint(self, conversation: str, message: ConversationMessage) -> None:
        if conversation not in self._unstored:
            self._do(lambda store: store.checkpoint(conversation, message))

    def settings(self, conversation: str, config: AgentConfig) -> None:
        if conversation not in self._unstored:
            self._do(lambda store: store.save_settings(conversation, stored_settings(config)))

    def turn_failed(self, problem: StoreError | ConversationInUse) -> TurnStoreError:
        if isinstance(problem, StoreError):
            self._fail(problem)
        return _turn_error(problem)

    def _fail(self, problem: StoreError) -> None:
        """A store fault mid-session: say it once, and carry on without the store."""
        if self._store is None:
            return
        log.warning("conversations are no longer stored: %s", problem)
        store, self._store, self._without = self._store, None, NullRecorder(problem)
        self._unstored.update(store.held)
        if isinstance(store, Store):
            with contextlib.suppress(StoreError):
                store.close()
        else:
            self._away = store

    def reconnect(self) -> bool:
        away = self._away
        if away is None:
            return self._store is not None
        try:
            away.heartbeat()
        except StoreError:
            return False
        log.warning("conversations are stored again (those of the agents live meanwhile are not)")
        self._store, self._away, self._without = away, None, NullRecorder()
        return True

    def cached(self, key: str, scope: str | None = None) -> CachedReply | None:
        if self._store is None:
            return self._without.cached(key, scope)
        return self._do(lambda store: store.cache_get(key, scope=scope))

    def cache(
        self, key: str, reply: CachedReply, conversation: str | None, scope: str | None = None
    ) -> None:
        if self._store is None:
            self._without.cache(key, reply, conversation, scope)
        else:
            self._do(
                lambda store: store.cache_put(key, reply, conversation=conversation, scope=scope)
            )

    def cache_stats(self) -> dict[str, int]:
        if self._store is None:
            return self._without.cache_stats()
        stats = self._store.cache_stats()
        return {"entries": stats.entries, "bytes": stats.bytes, "hits": stats.hits}

    def cache_clear(self) -> None:
        self._without.cache_clear()
        if self._store is not None:
            self._store.cache_clear()

    def close(self) -> None:
        for store in (self._store, self._away):
            if store is not None:
                store.close()
        self._store = self._away = None
