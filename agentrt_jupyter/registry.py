"""The registry of agents on the runtime loop: what the facades' commands act on.

Agents are created, resumed and retired here; their conversations are recorded through
the `Recorder`; monitors follow a change signal (`changed` / `next_change`) instead of
polling. Only the runtime loop touches it (the facades send commands through the portal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

from .agent import AgentCore
from .backends import check_parts
from .backends.base import Backend, BackendFactory
from .backends.pump import StreamPacer
from .backends.switch import switch_note
from .config import AgentConfig, RuntimeConfig, agent_config
from .conversation import LedgerEntry, Usage
from .endpoints import Backends
from .errors import AgentNotFound, ConversationExists, InvalidConfig, StoreError, Timeout
from .handle import Turn
from .portal import Inbox
from .quota import QuotaRegistry, QuotaScope
from .recorder import NullRecorder, Recorder, StoreRecorder
from .salvage import open_store
from .store import STORED_SETTINGS, StoredConversation
from .stores.base import ConversationStore
from .stores.opening import is_database_url, open_store_at

log = logging.getLogger("agentrt_jupyter")
T = TypeVar("T")
HEARTBEAT_SECONDS = 5.0
"""How often a runtime renews its conversations' writer leases."""
RETIRED_LEDGER_ROWS = 1_000_000
"""Most ledger rows kept of agents no longer in the runtime (the oldest go first)."""


class AgentHandle(Protocol):
    """Anything that names a live agent by its id (`Agent`, `AsyncAgent`)."""

    @property
    def id(self) -> str: ...


AgentRef: TypeAlias = "AgentHandle | str"
"""What runtime commands accept for an agent: a handle, or its id or name."""


@dataclass(frozen=True)
class AgentInfo:
    """A snapshot of one agent, for listings and monitors.

    `total_usage` counts the call streaming now too (its running total so far)."""

    id: str
    name: str
    model: str
    state: str
    turn_count: int
    queued: int
    current_turn: int | None
    running_for: float | None
    total_usage: Usage


class AgentRegistry:
    """Everything on the runtime loop: the agents (create, resume, retire), their backends,
    quota, recorder and change signal. Each agent's `AgentHost`; the facades' one target."""

    def __init__(
        self, config: RuntimeConfig, backend_factory: BackendFactory | None = None
    ) -> None:
        self.config = config
        self.backends = Backends(config, backend_factory)
        self.quota = QuotaRegistry()
        self.agents: dict[str, AgentCore] = {}
        self.retired_ledger: dict[LedgerEntry, None] = {}
        """The calls of agents no longer here (deleted, replaced, a map's rows): paid for.
        A set in the order retired: an agent that continued a retired one's conversation
        (reconfigured, resumed) carries its rows, and each call is kept once."""
        self.by_name: dict[str, str] = {}
        self.recorder: Recorder = _open_recorder(config)
        self.heartbeat_task: asyncio.Task[None] | None = None
        self.inbox = Inbox()
        self.pacer = StreamPacer()
        self.version = 0
        """Grows at every change a monitor shows (agents, turns, streamed usage)."""
        self._watchers: list[asyncio.Future[None]] = []

    @property
    def store(self) -> ConversationStore | None:
        """The store while it works (None without one, or after a fault)."""
        return self.recorder.store

    @property
    def store_problem(self) -> StoreError | None:
        """Why conversations are not stored, if the store could not be used."""
        return self.recorder.problem

    def serve_commands(self) -> None:
        if self.inbox.pending:
            self.inbox.drain()

    def lookup(self, ref: AgentRef) -> AgentCore:
        key = ref if isinstance(ref, str) else getattr(ref, "id", ref)
        if not isinstance(key, str):
            raise AgentNotFound(repr(key))
        agent = self.agents.get(key) or self.agents.get(self.by_name.get(key, ""))
        if agent is None:
            raise AgentNotFound(key)
        return agent

    def endpoint_label(self, config: AgentConfig) -> str:
        return self.backends.label(config)

    async def backend_for(self, config: AgentConfig) -> Backend:
        return await self.backends.backend_for(config)

    def cache_stats(self) -> dict[str, int]:
        return self.recorder.cache_stats()

    def cache_clear(self) -> None:
        self.recorder.cache_clear()

    def stored(
        self, name: str | None = None, *, everywhere: bool = False
    ) -> list[StoredConversation]:
        """Stored conversations, the one `resume` takes last: the newest that has messages
        (an agent created but never used does not hide an older conversation)."""
        namespace = None if everywhere else self.config.namespace
        if self.store is None:
            return []
        try:
            rows = self.store.conversations(namespace)
        except StoreError as problem:
            if not self.recorder.repair(problem):
                raise
            rows = [] if self.store is None else self.store.conversations(namespace)
        rows = [r for r in rows if name is None or r.name == name]
        return sorted(rows, key=lambda r: (r.messages > 0, r.last_activity))

    def start_heartbeat(self) -> None:
        self.heartbeat_task = asyncio.create_task(self._heartbeat(), name="store-heartbeat")

    async def _heartbeat(self) -> None:
        """Renew this runtime's writer leases while it lives (other kernels see it alive)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            store = self.store
            if store is None:
                if await asyncio.to_thread(self.recorder.reconnect):
                    self.changed()
                continue
            try:
                lost = await asyncio.to_thread(store.heartbeat)
            except StoreError as exc:
                log.warning("conversation store: %s", exc)
                continue
            for conversation in lost:
                log.warning("another kernel took over conversation %s", conversation)

    def _check_name_free(self, name: str) -> None:
        existing = self.agents.get(self.by_name.get(name, ""))
        if existing is not None and existing.state not in ("shutdown", "disconnected"):
            raise InvalidConfig(
                f"an agent named {name!r} is running: use it, or pick another name",
                field="name",
            )

    def _claim_name(self, name: str) -> None:
        """Make room for a new agent NAME: refused while one runs; a stopped one goes."""
        self._check_name_free(name)
        existing = self.agents.get(self.by_name.get(name, ""))
        if existing is not None:
            self._retire(existing)

    def create_agent(self, config: AgentConfig, fresh: bool = False) -> AgentCore:
        """A new agent; `fresh` starts a new conversation even where one is stored under
        its name (a notebook's cells after a kernel restart), else that is refused."""
        agent_id = f"agent-{secrets.token_hex(4)}"
        name = config.name or agent_id
        self.backends.check_endpoint(name, config)
        if config.name is not None:
            self.recorder.reconnect()
        self._claim_name(name)
        if config.name is not None and not fresh and self.stored(name):
            raise ConversationExists(name)
        agent = AgentCore(self, agent_id, name, config)
        if config.name is not None:
            agent.conversation_id = self.recorder.create(self.config.namespace, name, config)
        self.agents[agent_id] = agent
        self.by_name[name] = agent_id
        self.changed()
        return agent

    def resume(
        self,
        name: str,
        config: AgentConfig | None,
        take_over: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> AgentCore:
        """The newest stored conversation of NAME, continued by a new agent.

        Its settings are the stored ones, with `overrides` over them, or `config` whole.
        Without a store: `InvalidConfig` if none was set, else the store's `StoreError`."""
        if self.config.store_location is None:
            raise InvalidConfig(
                "resume needs a store: set RuntimeConfig(store_path=...)", field="store_path"
            )
        problem = self.store_problem
        if problem is not None:
            unusable = StoreError(f"cannot resume {name!r}: {problem}")
            unusable.path = problem.path
            raise unusable from problem
        stored, store = self.stored(name), self.store
        if not stored or store is None:
            raise AgentNotFound(name)
        self._check_name_free(name)
        loaded = store.open(stored[-1].id, take_over=take_over)
        if loaded is None:
            raise AgentNotFound(name)
        try:
            if config is None:
                settings = {
                    k: v
                    for k, v in loaded.settings.items()
                    if k in STORED_SETTINGS and v is not None
                }
                config = agent_config(None, {**settings, **(overrides or {}), "name": name})
            elif config.name != name:
                config = config.with_changes(name=name)
            self.backends.check_endpoint(name, config)
        except InvalidConfig:
            store.release(loaded.id)
            raise
        self._claim_name(name)
        agent = AgentCore(self, f"agent-{secrets.token_hex(4)}", name, config)
        agent.conversation = loaded.conversation
        agent.conversation_id = loaded.id
        self.agents[agent.id] = agent
        self.by_name[name] = agent.id
        self.recorder.settings(loaded.id, config)
        self.changed()
        return agent

    def reconfigure(
        self, ref: AgentRef, config: AgentConfig | None, settings: dict[str, Any]
    ) -> str | None:
        """New settings for an idle agent: `config` whole, or `settings` over its own. Its
        id, conversation and stored record stay (the store gets the new settings). On a
        switch of provider, the one-line note of what its history leaves behind (logged)."""
        agent = self.lookup(ref)
        agent.check_usable()
        active = agent.active  # a turn that has finished uses its settings no more
        if agent.queue or (active is not None and not active.finished):
            raise InvalidConfig(
                f"agent {agent.name!r} is running a turn: change its settings after it",
                field="config",
            )
        config = agent_config(config or agent.config, settings)
        if config.name != agent.config.name:
            config = config.with_changes(name=agent.config.name)
        self.backends.check_endpoint(agent.name, config)
        provider = self.backends.provider(config)
        switched = provider != self.backends.provider(agent.config)
        agent.reconfigure(config)
        if agent.conversation_id is not None:
            self.recorder.settings(agent.conversation_id, config)
        self.changed()
        note = switch_note(agent.conversation.context(), provider) if switched else None
        if note is not None:
            log.info("agent %r %s", agent.name, note)
        return note

    def chat(self, ref: AgentRef, parts: Any, refresh: bool = False) -> Turn:
        agent = self.lookup(ref)
        agent.check_usable()
        check_parts(self.backends.provider(agent.config), parts)  # before anything is sent
        turn = Turn(agent.name, parts, agent.model)
        turn.refresh = refresh
        agent.submit(turn)
        return turn

    def cancel(self, ref: AgentRef) -> bool:
        return self.lookup(ref).cancel_active()

    def running_turn(self, ref: AgentRef) -> Turn | None:
        """The agent's turn that runs now, wherever it was sent from (None when idle)."""
        turn = self.lookup(ref).active
        return None if turn is None or turn.task is None or turn.finished else turn

    def cancel_turn(self, ref: str, turn: Turn) -> None:
        self.lookup(ref).cancel_turn(turn)

    async def wait_for_idle(self, ref: AgentRef, timeout: float | None) -> None:
        agent = self.lookup(ref)
        try:
            await asyncio.wait_for(agent.idle.wait(), timeout)
        except TimeoutError:
            raise Timeout(f"agent {agent.name!r} still busy after {timeout} s") from None

    def signal_idle(self, ref: AgentRef) -> None:
        agent = self.lookup(ref)
        if agent.is_idle():
            agent.wakeup.clear()

    async def wait_for_wakeup(self, ref: AgentRef, timeout: float | None) -> bool:
        agent = self.lookup(ref)
        try:
            await asyncio.wait_for(agent.wakeup.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def query(self, ref: AgentRef, what: Callable[[AgentCore], T]) -> T:
        return what(self.lookup(ref))

    async def clear_history(self, ref: AgentRef) -> None:
        """Cancel what runs or waits first: a running turn must not write into the cleared
        history (the contents sent next would start with a model message)."""
        agent = self.lookup(ref)
        agent.check_usable()
        await agent.cancel_all()
        agent.conversation.clear()
        if self.store is not None and agent.conversation_id is not None:
            self.store.clear(agent.conversation_id)
            self.recorder.settings(agent.conversation_id, agent.config)

    async def stop_agent(self, ref: AgentRef, how: str) -> None:
        agent = self.lookup(ref)
        await agent.stop("disconnected" if how == "disconnect" else "shutdown")
        if self.store is not None and agent.conversation_id is not None and how != "delete":
            self.store.release(agent.conversation_id)
        self.changed()
        if how == "delete":
            self._retire(agent)
            self.by_name.pop(agent.name, None)
            if self.store is not None and agent.config.name is not None:
                if agent.conversation_id is not None:
                    self.store.delete(agent.conversation_id)
                self._delete_stored(agent.name)

    def delete_stored(self, name: str) -> None:
        """Erase the stored conversations of a name that has no live agent."""
        if not self._delete_stored(name):
            raise AgentNotFound(name)

    def _delete_stored(self, name: str) -> int:
        """Erase every stored conversation of `name` in this namespace; how many there were."""
        if self.store is None:
            return 0
        rows = [r for r in self.store.conversations(self.config.namespace) if r.name == name]
        for row in rows:
            self.store.delete(row.id)
        return len(rows)

    def changed(self) -> None:
        """Something a monitor shows changed: wake the watchers (cheap; called per chunk)."""
        self.version += 1
        if self._watchers:
            watchers, self._watchers = self._watchers, []
            for watcher in watchers:
                if not watcher.done():
                    watcher.set_result(None)

    async def next_change(self, since: int, timeout: float | None) -> tuple[int, list[AgentInfo]]:
        """The agents once the version passed `since` (or at the timeout, unchanged)."""
        if self.version == since:
            watcher = asyncio.get_running_loop().create_future()
            self._watchers.append(watcher)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher, timeout)
        return self.version, self.agent_infos()

    def agent_infos(self) -> list[AgentInfo]:
        now = time.monotonic()
        infos = []
        for agent in self.agents.values():
            active = agent.active
            infos.append(
                AgentInfo(
                    id=agent.id,
                    name=agent.name,
                    model=agent.model,
                    state=agent.state,
                    turn_count=agent.conversation.turn_count,
                    queued=len(agent.queue),
                    current_turn=active.number if active is not None else None,
                    running_for=now - active.started_at
                    if active is not None and active.started_at is not None
                    else None,
                    total_usage=agent.conversation.total_usage() + agent.streaming_usage(),
                )
            )
        return infos

    def _retire(self, agent: AgentCore) -> None:
        """The agent leaves the runtime; its calls stay in the runtime's ledger."""
        del self.agents[agent.id]
        self.add_calls(agent.conversation.ledger)

    def add_calls(self, entries: Iterable[LedgerEntry]) -> None:
        """Calls no live agent holds join the runtime's ledger (a retired agent's, a map's
        Batch API jobs); the oldest go past `RETIRED_LEDGER_ROWS`."""
        retired = self.retired_ledger
        for entry in entries:
            if entry not in retired:
                retired[entry] = None
        while len(retired) > RETIRED_LEDGER_ROWS:
            del retired[next(iter(retired))]

    def ledger(self) -> list[LedgerEntry]:
        """Every call of this runtime once, in the order they started (live agents' and
        those of agents no longer here)."""
        rows = dict.fromkeys(
            entry for agent in self.agents.values() for entry in agent.conversation.ledger
        )
        rows.update(self.retired_ledger)
        return sorted(rows, key=lambda entry: entry.started)

    async def wait_for_quota(self, timeout: float | None) -> float:
        backend = await self.backends.default()
        try:
            return await asyncio.wait_for(self.quota.wait(backend.credential), timeout)
        except TimeoutError:
            raise Timeout(f"still rate limited after {timeout} s") from None

    async def record_quota_hit(self, retry_after: float | None, scope: QuotaScope) -> float:
        backend = await self.backends.default()
        return self.quota.record_hit(backend.credential, retry_after, scope=scope)

    async def aclose(self) -> None:
        """Stop every agent (their turns end cancelled), then `release`."""
        await asyncio.gather(
            *(agent.stop("shutdown") for agent in self.agents.values()), return_exceptions=True
        )
        await self.release()

    async def release(self) -> None:
        """Close the backends' clients and the store; idempotent, and run by the portal
        even when a shutdown's timeout cut `aclose` short."""
        await self.backends.aclose()
        self.recorder.close()


def _holder() -> str:
    """Who writes: the kernel (by its connection file) or the script, for ConversationInUse."""
    kernel = sys.modules.get("ipykernel.connect")
    if kernel is not None:
        with contextlib.suppress(Exception):
            return f"kernel {os.path.basename(kernel.get_connection_file())}"
    return f"python {os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else '-'}"


def _open_recorder(config: RuntimeConfig) -> Recorder:
    """The store's recorder, or one without a store (and why): a broken store file must
    not stop the runtime. One with corrupt pages is recovered into a fresh file first."""
    location = config.store_location
    if location is None:
        return NullRecorder()
    if is_database_url(location):
        try:
            return StoreRecorder(open_store_at(location, holder=_holder()))
        except StoreError as exc:
            log.warning("conversations will not be stored: %s", exc)
            return NullRecorder(exc)
    assert config.store_path is not None
    try:
        store, recovery = open_store(config.store_path, holder=_holder(), busy_timeout=2.0)
    except StoreError as exc:
        log.warning("conversations will not be stored: %s", exc)
        return NullRecorder(exc)
    if recovery is not None:
        log.warning("%s", recovery)
    return StoreRecorder(store, recovery)
