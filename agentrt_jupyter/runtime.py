"""`AgentRuntime`: one thread with its own asyncio loop, reached through one command channel.

The thread and its channel are the `Portal` (portal.py); all agent state lives on the
loop in the `AgentRegistry` (registry.py). `AgentRuntime` (sync) and `AsyncAgentRuntime`
(`runtime.aio`) are thin facades over them, so there is one implementation, and a test
keeps their command lists and signatures the same. `Agent` and `AsyncAgent` are the
handles on one agent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .agent import AgentCore
from .backends.base import Backend, BackendFactory
from .config import AgentConfig, RuntimeConfig, agent_config
from .content import to_parts
from .conversation import ConversationMessage, LedgerEntry, Usage
from .errors import AgentNotFound, InvalidConfig, StoreError, Timeout, WrongThread
from .handle import ChatHandle, Turn
from .operators import operator
from .portal import Portal
from .quota import QuotaRegistry, QuotaScope, QuotaState
from .registry import AgentInfo, AgentRef, AgentRegistry
from .salvage import StoreRecovery
from .store import StoredConversation

if TYPE_CHECKING:
    from .server.process import LocalServer

__all__ = ["Agent", "AgentInfo", "AgentRef", "AgentRuntime", "AsyncAgent", "AsyncAgentRuntime"]

P = ParamSpec("P")
T = TypeVar("T")
_runtime_numbers = itertools.count(1)
FINALIZE_TIMEOUT = 2.0
"""A runtime nobody shut down gets this long to close when it is collected or at exit."""


def _finalize(portal: Portal, core: AgentRegistry) -> None:
    """Best-effort stop for a runtime nobody shut down (holds no reference to it)."""
    if portal.closed:
        return
    portal.closed = True
    portal.stop(core.aclose, core.release, FINALIZE_TIMEOUT)
    if not portal.on_loop():
        portal.stopped.wait(FINALIZE_TIMEOUT + 1.0)


class Agent:
    """A handle on one agent; every method goes through the runtime's channel."""

    def __init__(self, runtime: AgentRuntime, agent_id: str, name: str) -> None:
        self.runtime = runtime
        self.id = agent_id
        self.name = name

    def __repr__(self) -> str:
        return f"<Agent {self.name!r} id={self.id}>"

    @property
    def aio(self) -> AsyncAgent:
        """The same agent with awaitable methods, for async code."""
        return AsyncAgent(self.runtime.aio, self.id, self.name)

    def chat(self, content: Any, *, refresh: bool = False) -> ChatHandle:
        return self.runtime.chat(self, content, refresh=refresh)

    def send(self, content: Any) -> ChatHandle:
        return self.runtime.send(self, content)

    def cancel(self) -> bool:
        return self.runtime.cancel(self)

    def wait_for_idle(self, timeout: float | None = None) -> None:
        self.runtime.wait_for_idle(self, timeout)

    def is_idle(self) -> bool:
        return self.runtime.is_idle(self)

    def signal_idle(self) -> None:
        self.runtime.signal_idle(self)

    def wait_for_wakeup(self, timeout: float | None = None) -> bool:
        return self.runtime.wait_for_wakeup(self, timeout)

    def history(self) -> list[ConversationMessage]:
        return self.runtime.history(self)

    def turn_count(self) -> int:
        return self.runtime.turn_count(self)

    def total_usage(self) -> Usage:
        return self.runtime.total_usage(self)

    def last_turn_usage(self) -> Usage:
        return self.runtime.last_turn_usage(self)

    def last_response(self) -> str | None:
        return self.runtime.last_response(self)

    def last_message(self) -> ConversationMessage | None:
        return self.runtime.last_message(self)

    def ledger(self) -> list[LedgerEntry]:
        return self.runtime.agent_ledger(self)

    def clear_history(self) -> None:
        self.runtime.clear_history(self)

    def reconfigure(self, config: AgentConfig | None = None, **settings: Any) -> str | None:
        return self.runtime.reconfigure(self, config, **settings)

    def compaction_indices(self) -> list[int]:
        return self.runtime.compaction_indices(self)

    def disconnect(self) -> None:
        self.runtime.disconnect(self)

    def delete(self) -> None:
        self.runtime.delete(self)

    def shutdown(self) -> None:
        self.runtime.shutdown_agent(self)

    def try_shutdown(self) -> bool:
        return self.runtime.try_shutdown_agent(self)


class AsyncAgent:
    """A handle on one agent for async code (`await runtime.aio.create_agent()`): every
    method is awaitable, so none blocks the caller's event loop."""

    def __init__(self, runtime: AsyncAgentRuntime, agent_id: str, name: str) -> None:
        self.runtime = runtime
        self.id = agent_id
        self.name = name

    def __repr__(self) -> str:
        return f"<AsyncAgent {self.name!r} id={self.id}>"

    @property
    def sync(self) -> Agent:
        """The same agent with blocking methods."""
        return Agent(self.runtime._runtime, self.id, self.name)

    async def chat(self, content: Any, *, refresh: bool = False) -> ChatHandle:
        return await self.runtime.chat(self, content, refresh=refresh)

    async def send(self, content: Any) -> ChatHandle:
        return await self.runtime.send(self, content)

    async def cancel(self) -> bool:
        return await self.runtime.cancel(self)

    async def wait_for_idle(self, timeout: float | None = None) -> None:
        await self.runtime.wait_for_idle(self, timeout)

    async def is_idle(self) -> bool:
        return await self.runtime.is_idle(self)

    async def signal_idle(self) -> None:
        await self.runtime.signal_idle(self)

    async def wait_for_wakeup(self, timeout: float | None = None) -> bool:
        return await self.runtime.wait_for_wakeup(self, timeout)

    async def history(self) -> list[ConversationMessage]:
        return await self.runtime.history(self)

    async def turn_count(self) -> int:
        return await self.runtime.turn_count(self)

    async def total_usage(self) -> Usage:
        return await self.runtime.total_usage(self)

    async def last_turn_usage(self) -> Usage:
        return await self.runtime.last_turn_usage(self)

    async def last_response(self) -> str | None:
        return await self.runtime.last_response(self)

    async def last_message(self) -> ConversationMessage | None:
        return await self.runtime.last_message(self)

    async def ledger(self) -> list[LedgerEntry]:
        return await self.runtime.agent_ledger(self)

    async def clear_history(self) -> None:
        await self.runtime.clear_history(self)

    async def reconfigure(self, config: AgentConfig | None = None, **settings: Any) -> str | None:
        return await self.runtime.reconfigure(self, config, **settings)

    async def compaction_indices(self) -> list[int]:
        return await self.runtime.compaction_indices(self)

    async def disconnect(self) -> None:
        await self.runtime.disconnect(self)

    async def delete(self) -> None:
        await self.runtime.delete(self)

    async def shutdown(self) -> None:
        await self.runtime.shutdown_agent(self)

    def try_shutdown(self) -> bool:
        """Schedule a shutdown; never raises, never waits (safe in finalizers)."""
        return self.runtime.try_shutdown_agent(self)


def _last_turn_usage(agent: AgentCore) -> Usage:
    ledger = agent.conversation.ledger
    return agent.conversation.turn_usage(ledger[-1].turn) if ledger else Usage()


class AsyncAgentRuntime:
    """`runtime.aio`: the same API, awaitable from any event loop (the kernel's included)."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime
        self._portal = runtime._portal
        self._core = runtime._core

    async def create_agent(
        self, config: AgentConfig | None = None, *, fresh: bool = False, **settings: Any
    ) -> AsyncAgent:
        """`runtime.create_agent` for an event loop: the handle's methods are awaitable."""
        core = await self._portal.acall(
            self._core.create_agent, agent_config(config, settings), fresh
        )
        return AsyncAgent(self, core.id, core.name)

    async def resume(
        self,
        name: str,
        config: AgentConfig | None = None,
        *,
        take_over: bool = False,
        **settings: Any,
    ) -> AsyncAgent:
        core = await self._portal.acall(self._core.resume, name, config, take_over, settings)
        return AsyncAgent(self, core.id, core.name)

    async def agent(self, name: str) -> AsyncAgent:
        """The handle of a live agent by id or name."""
        core = await self._portal.acall(self._core.query, name, lambda a: a)
        return AsyncAgent(self, core.id, core.name)

    async def stored_conversations(self) -> list[str]:
        rows = await self._portal.acall(self._core.stored)
        return list(dict.fromkeys(r.name for r in rows))

    async def conversations(self, *, everywhere: bool = False) -> list[StoredConversation]:
        return await self._portal.acall(self._core.stored, None, everywhere=everywhere)

    async def cache_stats(self) -> dict[str, int]:
        return await self._portal.acall(self._core.cache_stats)

    async def cache_clear(self) -> None:
        await self._portal.acall(self._core.cache_clear)

    async def chat(self, agent: AgentRef, content: Any, *, refresh: bool = False) -> ChatHandle:
        parts = to_parts(content)
        turn = await self._portal.acall(self._core.chat, agent, parts, refresh)
        return self._runtime._handle(turn)

    async def send(self, agent: AgentRef, content: Any) -> ChatHandle:
        return await self.chat(agent, content)

    async def cancel(self, agent: AgentRef) -> bool:
        return await self._portal.acall(self._core.cancel, agent)

    async def running_turn(self, agent: AgentRef) -> ChatHandle | None:
        turn = await self._portal.acall(self._core.running_turn, agent)
        return None if turn is None else self._runtime._handle(turn)

    async def wait_for_idle(self, agent: AgentRef, timeout: float | None = None) -> None:
        await self._portal.acall(self._core.wait_for_idle, agent, timeout)

    async def is_idle(self, agent: AgentRef) -> bool:
        return await self._portal.acall(self._core.query, agent, AgentCore.is_idle)

    async def signal_idle(self, agent: AgentRef) -> None:
        await self._portal.acall(self._core.signal_idle, agent)

    async def wait_for_wakeup(self, agent: AgentRef, timeout: float | None = None) -> bool:
        return await self._portal.acall(self._core.wait_for_wakeup, agent, timeout)

    async def history(self, agent: AgentRef) -> list[ConversationMessage]:
        return await self._portal.acall(self._core.query, agent, _history)

    async def turn_count(self, agent: AgentRef) -> int:
        return await self._portal.acall(self._core.query, agent, _turn_count)

    async def total_usage(self, agent: AgentRef) -> Usage:
        return await self._portal.acall(self._core.query, agent, _total_usage)

    async def last_turn_usage(self, agent: AgentRef) -> Usage:
        return await self._portal.acall(self._core.query, agent, _last_turn_usage)

    async def last_response(self, agent: AgentRef) -> str | None:
        return await self._portal.acall(self._core.query, agent, _last_response)

    async def last_message(self, agent: AgentRef) -> ConversationMessage | None:
        return await self._portal.acall(self._core.query, agent, _last_message)

    async def agent_ledger(self, agent: AgentRef) -> list[LedgerEntry]:
        return await self._portal.acall(self._core.query, agent, _agent_ledger)

    async def clear_history(self, agent: AgentRef) -> None:
        await self._portal.acall(self._core.clear_history, agent)

    async def reconfigure(
        self, agent: AgentRef, config: AgentConfig | None = None, **settings: Any
    ) -> str | None:
        note: str | None = await self._portal.acall(self._core.reconfigure, agent, config, settings)
        return note

    async def compaction_indices(self, agent: AgentRef) -> list[int]:
        return await self._portal.acall(self._core.query, agent, _compactions)

    async def disconnect(self, agent: AgentRef) -> None:
        await self._portal.acall(self._core.stop_agent, agent, "disconnect")

    async def delete(self, agent: AgentRef) -> None:
        try:
            await self._portal.acall(self._core.stop_agent, agent, "delete")
        except AgentNotFound:
            if not isinstance(agent, str):
                raise
            await self._portal.acall(self._core.delete_stored, agent)

    async def shutdown_agent(self, agent: AgentRef) -> None:
        await self._portal.acall(self._core.stop_agent, agent, "shutdown")

    def try_shutdown_agent(self, agent: AgentRef) -> bool:
        """Schedule a shutdown; never raises, never waits (safe in finalizers)."""
        return self._runtime.try_shutdown_agent(agent)

    async def agents(self) -> list[AgentInfo]:
        return await self._portal.acall(self._core.agent_infos)

    async def wait_for_change(
        self, since: int = -1, timeout: float | None = None
    ) -> tuple[int, list[AgentInfo]]:
        """`runtime.wait_for_change` for an event loop; `watch` iterates the same signal."""
        return await self._portal.acall(self._core.next_change, since, timeout)

    async def watch(self, interval: float = 0.1) -> AsyncIterator[list[AgentInfo]]:
        """The agents now, then again after each change, at most once per `interval` s.

        Agents created, stopped or deleted, turns queued, started or ended, and tokens
        counted while a reply streams are changes: a monitor fed by this counts up live
        and is quiet (no polling) while nothing happens.
        """
        version, infos = await self._portal.acall(self._core.next_change, -1, 0)
        while True:
            yield infos
            started = time.monotonic()
            version, infos = await self._portal.acall(self._core.next_change, version, None)
            if (left := interval - (time.monotonic() - started)) > 0:
                await asyncio.sleep(left)
                version, infos = await self._portal.acall(self._core.next_change, version, 0)

    async def ledger(self) -> list[LedgerEntry]:
        return await self._portal.acall(self._core.ledger)

    async def wait_for_quota(self, timeout: float | None = None) -> float:
        return await self._portal.acall(self._core.wait_for_quota, timeout)

    async def record_quota_hit(
        self, retry_after: float | None, scope: QuotaScope = "minute"
    ) -> float:
        return await self._portal.acall(self._core.record_quota_hit, retry_after, scope)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """`runtime.shutdown` for an event loop: the caller's loop runs on meanwhile.

        Refused on the runtime's own threads (it would wait for itself)."""
        portal = self._portal
        if portal.on_loop() or portal.in_worker():
            raise WrongThread(
                "shutdown() cannot run on the runtime's own threads (the loop or a tool): "
                "call runtime.aio.try_shutdown() to schedule it"
            )
        await asyncio.to_thread(self._runtime.shutdown, timeout)

    def try_shutdown(self) -> bool:
        """Start the shutdown and return at once (safe anywhere, even inside a tool)."""
        return self._runtime.try_shutdown()

    async def record_calls(self, entries: Sequence[LedgerEntry]) -> None:
        """Add calls made outside any agent to the runtime's ledger (a map's Batch API
        job: one row per job, with its provider and usage)."""
        await self._portal.acall(self._core.add_calls, list(entries))

    async def backend(self, config: AgentConfig | None = None) -> Backend:
        """The backend that answers agents with `config` (no config: the runtime's own),
        made on first use; for features that talk to the provider beyond a chat (map's
        Batch mode). Its methods run on the runtime loop."""
        return await self._portal.acall(self._core.backend_for, config or AgentConfig())

    async def map(self, frame: Any, template: str, **options: Any) -> Any:
        """`runtime.map` for an event loop; see `agentrt_jupyter.batch.engine.start_map`."""
        return await operator("map").arun(self._runtime, frame, template, **options)

    async def filter(self, frame: Any, template: str, **options: Any) -> Any:
        """`runtime.filter` for an event loop."""
        return await operator("filter").arun(self._runtime, frame, template, **options)

    async def classify(self, frame: Any, template: str, **options: Any) -> Any:
        """`runtime.classify` for an event loop."""
        return await operator("classify").arun(self._runtime, frame, template, **options)

    async def extract(self, frame: Any, template: str, **options: Any) -> Any:
        """`runtime.extract` for an event loop."""
        return await operator("extract").arun(self._runtime, frame, template, **options)


def _history(agent: AgentCore) -> list[ConversationMessage]:
    return list(agent.conversation.messages)


def _turn_count(agent: AgentCore) -> int:
    return agent.conversation.turn_count


def _total_usage(agent: AgentCore) -> Usage:
    return agent.conversation.total_usage()


def _last_message(agent: AgentCore) -> ConversationMessage | None:
    return agent.conversation.last_response()


def _last_response(agent: AgentCore) -> str | None:
    message = agent.conversation.last_response()
    return None if message is None else message.text


def _agent_ledger(agent: AgentCore) -> list[LedgerEntry]:
    return list(agent.conversation.ledger)


def _compactions(agent: AgentCore) -> list[int]:
    return list(agent.conversation.compactions)


class AgentRuntime:
    """The agent runtime: a dedicated thread and event loop for all model work.

    Returns at once; every method is safe from any thread. Use as a context manager
    or call `shutdown()`; a forgotten runtime is stopped by a finalizer.
    """

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        *,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        """`backend_factory(endpoint)` makes the backend of each endpoint (one each, closed
        at shutdown); the default is google-genai's. `FakeBackend` tests without a network."""
        if config is not None and not isinstance(config, RuntimeConfig):
            raise InvalidConfig(
                f"expected a RuntimeConfig, got {type(config).__name__}", field="config"
            )
        if backend_factory is not None and not callable(backend_factory):
            raise InvalidConfig(
                "must be a callable taking an Endpoint and returning a backend, got "
                f"{type(backend_factory).__name__}",
                field="backend_factory",
            )
        self.config = config or RuntimeConfig()
        number = next(_runtime_numbers)
        name = self.config.thread_name if number == 1 else f"{self.config.thread_name}-{number}"
        self._core = AgentRegistry(self.config, backend_factory)
        self._portal = Portal(name, self._core.inbox)
        self._finalizer = weakref.finalize(self, _finalize, self._portal, self._core)
        if self._core.store is not None:
            self._portal.submit(self._core.start_heartbeat)
        self._shutdown_lock = threading.Lock()
        self.aio = AsyncAgentRuntime(self)

    def __repr__(self) -> str:
        state = "closed" if self._portal.closed else "running"
        backend = self.config.resolved_backend()
        return f"<AgentRuntime {backend} {state} thread={self._portal.thread.name!r}>"

    def __enter__(self) -> AgentRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def closed(self) -> bool:
        return self._portal.closed

    @property
    def thread(self) -> threading.Thread:
        return self._portal.thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The runtime's loop, to inspect; start work on it with `start_task_soon`."""
        return self._portal.loop

    @overload
    def start_task_soon(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]: ...
    @overload
    def start_task_soon(
        self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]: ...
    def start_task_soon(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` on the runtime loop (a coroutine function as a task)
        without waiting; returns its future (cancel it to cancel the task).

        The one way code outside the runtime starts work on the loop (anyio's name);
        raises `RuntimeClosed` after shutdown."""
        return self._portal.submit(fn, *args, **kwargs)

    @property
    def local_server(self) -> LocalServer | None:
        """The local model server this runtime started, if any."""
        return self._core.backends.server

    def _handle(self, turn: Turn) -> ChatHandle:
        portal = self._portal

        def cancel() -> None:
            if not portal.closed:
                portal.submit(self._core.cancel_turn, turn.agent, turn)

        return ChatHandle(turn, cancel)

    def start_warm_up(self) -> concurrent.futures.Future[None]:
        """Begin, in the background, what the first turn would wait for: the SDK import
        (~1 s), the client, without a key the local model server, and the SDK's models.

        Returns at once, with the warm-up's future: its result is None also when the
        warm-up failed (that is logged; the first turn reports it), and it is cancelled if
        the runtime shuts down first. Calling it again waits for the first one's backend
        and adds nothing."""
        return self._portal.submit(self._core.backends.warm_up)

    def create_agent(
        self, config: AgentConfig | None = None, *, fresh: bool = False, **settings: Any
    ) -> Agent:
        """A new agent; `settings` are AgentConfig fields (validated first).

        A named agent whose name has a stored conversation raises `ConversationExists`
        (resume it, or delete it) unless `fresh=True` starts a new conversation beside it.
        """
        core = self._portal.call(self._core.create_agent, agent_config(config, settings), fresh)
        return Agent(self, core.id, core.name)

    def resume(
        self,
        name: str,
        config: AgentConfig | None = None,
        *,
        take_over: bool = False,
        **settings: Any,
    ) -> Agent:
        """Bring back a stored conversation (after `disconnect` or a kernel restart).

        It keeps its stored settings, with `settings` (AgentConfig fields) over them, or
        takes `config` whole. Another live kernel writing it gives `ConversationInUse`;
        `take_over=True` takes the conversation from it."""
        core = self._portal.call(self._core.resume, name, config, take_over, settings)
        return Agent(self, core.id, core.name)

    def agent(self, name: str) -> Agent:
        """The handle of a live agent by id or name."""
        core = self._portal.call(self._core.query, name, lambda a: a)
        return Agent(self, core.id, core.name)

    def stored_conversations(self) -> list[str]:
        """Names of the conversations kept in the store for this runtime's namespace."""
        rows = self._portal.call(self._core.stored)
        return list(dict.fromkeys(r.name for r in rows))

    def conversations(self, *, everywhere: bool = False) -> list[StoredConversation]:
        """Stored conversations (this namespace, or `everywhere`): size, last activity, holder."""
        return self._portal.call(self._core.stored, None, everywhere=everywhere)

    @property
    def store_problem(self) -> StoreError | None:
        """Why conversations are not stored, if the store could not be opened."""
        return self._core.store_problem

    @property
    def store_recovery(self) -> StoreRecovery | None:
        """How the store file was recovered from corrupt pages, if it had to be."""
        return self._core.recorder.recovery

    def cache_stats(self) -> dict[str, int]:
        """The reply cache: entries, bytes, hits."""
        return self._portal.call(self._core.cache_stats)

    def cache_clear(self) -> None:
        self._portal.call(self._core.cache_clear)

    def chat(self, agent: AgentRef, content: Any, *, refresh: bool = False) -> ChatHandle:
        """Start a turn; returns at once with a handle that streams its events.

        With the reply cache on, `refresh=True` calls the model even for a recorded request.
        """
        parts = to_parts(content)
        return self._handle(self._portal.call(self._core.chat, agent, parts, refresh))

    def send(self, agent: AgentRef, content: Any) -> ChatHandle:
        """Queue a message without waiting; its reply is recorded like any turn."""
        return self.chat(agent, content)

    def cancel(self, agent: AgentRef) -> bool:
        """Stop the active turn now; True if one was running."""
        return self._portal.call(self._core.cancel, agent)

    def running_turn(self, agent: AgentRef) -> ChatHandle | None:
        """A handle on the turn the agent runs now, wherever it was sent from (a cell, a
        panel, another thread), to follow its events; None when it is idle."""
        turn = self._portal.call(self._core.running_turn, agent)
        return None if turn is None else self._handle(turn)

    def wait_for_idle(self, agent: AgentRef, timeout: float | None = None) -> None:
        self._portal.call(self._core.wait_for_idle, agent, timeout)

    def is_idle(self, agent: AgentRef) -> bool:
        return self._portal.call(self._core.query, agent, AgentCore.is_idle)

    def signal_idle(self, agent: AgentRef) -> None:
        self._portal.call(self._core.signal_idle, agent)

    def wait_for_wakeup(self, agent: AgentRef, timeout: float | None = None) -> bool:
        """After `signal_idle`: True when a message arrives, False when the timeout passes."""
        return self._portal.call(self._core.wait_for_wakeup, agent, timeout)

    def history(self, agent: AgentRef) -> list[ConversationMessage]:
        return self._portal.call(self._core.query, agent, _history)

    def turn_count(self, agent: AgentRef) -> int:
        return self._portal.call(self._core.query, agent, _turn_count)

    def total_usage(self, agent: AgentRef) -> Usage:
        return self._portal.call(self._core.query, agent, _total_usage)

    def last_turn_usage(self, agent: AgentRef) -> Usage:
        return self._portal.call(self._core.query, agent, _last_turn_usage)

    def last_response(self, agent: AgentRef) -> str | None:
        """The text of the last model response, if any."""
        return self._portal.call(self._core.query, agent, _last_response)

    def last_message(self, agent: AgentRef) -> ConversationMessage | None:
        """The last model response as a `ConversationMessage` (parts, usage, status)."""
        return self._portal.call(self._core.query, agent, _last_message)

    def agent_ledger(self, agent: AgentRef) -> list[LedgerEntry]:
        return self._portal.call(self._core.query, agent, _agent_ledger)

    def clear_history(self, agent: AgentRef) -> None:
        """Forget what the model sees; turn count 0; total usage (billed) kept."""
        self._portal.call(self._core.clear_history, agent)

    def reconfigure(
        self, agent: AgentRef, config: AgentConfig | None = None, **settings: Any
    ) -> str | None:
        """New settings for an idle agent from its next turn on: `config` whole, or
        `settings` (AgentConfig fields) over its own. It stays the same agent: its id,
        conversation and stored record (`InvalidConfig` while a turn runs). A switch of
        provider keeps the conversation; what the new provider cannot take of it (another
        provider's thinking, attachments it refuses) is left out, and the one-line note
        saying so is returned (None when nothing is)."""
        note: str | None = self._portal.call(self._core.reconfigure, agent, config, settings)
        return note

    def compaction_indices(self, agent: AgentRef) -> list[int]:
        return self._portal.call(self._core.query, agent, _compactions)

    def disconnect(self, agent: AgentRef) -> None:
        """Stop the agent and keep its stored conversation for `resume(name)`."""
        self._portal.call(self._core.stop_agent, agent, "disconnect")

    def delete(self, agent: AgentRef) -> None:
        """Stop the agent (if live) and erase its stored conversation."""
        self._portal.call(self.aio.delete, agent)

    def shutdown_agent(self, agent: AgentRef) -> None:
        self._portal.call(self._core.stop_agent, agent, "shutdown")

    def try_shutdown_agent(self, agent: AgentRef) -> bool:
        """Schedule a shutdown; never raises, never waits (safe in finalizers)."""
        try:
            self._portal.submit(self._core.stop_agent, agent, "shutdown")
        except Exception:
            return False
        return True

    def agents(self) -> list[AgentInfo]:
        return self._portal.call(self._core.agent_infos)

    def wait_for_change(
        self, since: int = -1, timeout: float | None = None
    ) -> tuple[int, list[AgentInfo]]:
        """Block until something a monitor shows changed after version `since`.

        Returns (version, agents); pass the version back to wait for the next change.
        `runtime.aio.watch()` is the async iterator over the same signal."""
        return self._portal.call(self._core.next_change, since, timeout)

    def watch(self, interval: float = 0.1) -> Iterator[list[AgentInfo]]:
        """The agents now, then again after each change, at most once per `interval` s
        (the blocking twin of `runtime.aio.watch`, over `wait_for_change`)."""
        version, infos = self.wait_for_change(-1, 0)
        while True:
            yield infos
            started = time.monotonic()
            version, infos = self.wait_for_change(version)
            if (left := interval - (time.monotonic() - started)) > 0:
                time.sleep(left)
                version, infos = self.wait_for_change(version, 0)

    def ledger(self) -> list[LedgerEntry]:
        """Every API call this runtime made, in the order they started: live agents' and
        those of agents no longer here (deleted, replaced, a map's rows)."""
        return self._portal.call(self._core.ledger)

    def wait_for_quota(self, timeout: float | None = None) -> float:
        """Wait until the default credential is not rate limited; returns seconds waited."""
        return self._portal.call(self._core.wait_for_quota, timeout)

    def record_quota_hit(self, retry_after: float | None, scope: QuotaScope = "minute") -> float:
        """Tell the runtime about a rate limit seen elsewhere; every agent on the key waits."""
        return self._portal.call(self._core.record_quota_hit, retry_after, scope)

    @property
    def quota_registry(self) -> QuotaRegistry:
        return self._core.quota

    @property
    def quota_state(self) -> QuotaState | None:
        """The default credential's state (None before the first model call)."""
        credential = self._core.backends.default_credential
        return None if credential is None else self._core.quota.state(credential)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel turns, close agents and the SDK client, stop the thread; idempotent.

        Returns within `timeout` seconds whatever runs, or raises `Timeout` (the thread
        then ends within a short grace period). Every caller, from any thread, waits
        for the same end. Refused at once on the runtime thread and inside a sync tool,
        where waiting would deadlock.
        """
        if self._portal.on_loop() or self._portal.in_worker():
            raise WrongThread(
                "shutdown() cannot run on the runtime's own threads (the loop or a tool): "
                "return from the tool first, or call runtime.try_shutdown() to schedule it"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidConfig(f"must be a number >= 0, got {timeout!r}", field="timeout")
        with self._shutdown_lock:
            if not self._portal.closed:
                self._portal.closed = True
                self._finalizer.detach()
                self._portal.stop(self._core.aclose, self._core.release, timeout)
        if not self._portal.stopped.wait(timeout):
            raise Timeout(f"the runtime thread did not stop within {timeout} s")

    def try_shutdown(self) -> bool:
        """Start the shutdown and return at once (safe anywhere, even inside a tool)."""
        with self._shutdown_lock:
            if self._portal.closed:
                return False
            self._portal.closed = True
            self._finalizer.detach()
            self._portal.stop(self._core.aclose, self._core.release, 10.0)
        return True

    def record_calls(self, entries: Sequence[LedgerEntry]) -> None:
        """Add calls made outside any agent to the runtime's ledger (a map's Batch API
        job: one row per job, with its provider and usage)."""
        self._portal.call(self._core.add_calls, list(entries))

    def backend(self, config: AgentConfig | None = None) -> Backend:
        """The backend that answers agents with `config` (no config: the runtime's own),
        made on first use; for features that talk to the provider beyond a chat (map's
        Batch mode). Its methods run on the runtime loop (`start_task_soon`)."""
        return self._portal.call(self._core.backend_for, config or AgentConfig())

    def map(self, frame: Any, template: str, **options: Any) -> Any:
        """Run `template` (`{column}` placeholders) over every row of the DataFrame `frame`
        and return a frame aligned with its index: one independent request per row,
        quota-aware, resumable, budgeted; see `agentrt_jupyter.batch.engine.start_map`."""
        return operator("map").run(self, frame, template, **options)

    def filter(self, frame: Any, template: str, **options: Any) -> Any:
        """The rows of `frame` for which the model judges `template` true (`mask=True`: the
        boolean Series); map's options, plus a cascade (`escalate_to=`, `threshold=`) and
        `explain=True`; see `agentrt_jupyter.batch.semantic`."""
        return operator("filter").run(self, frame, template, **options)

    def classify(self, frame: Any, template: str, **options: Any) -> Any:
        """A categorical Series: each row of `frame` put in one of `labels=[...]` (or an
        Enum) by the model; see `agentrt_jupyter.batch.semantic`."""
        return operator("classify").run(self, frame, template, **options)

    def extract(self, frame: Any, template: str, **options: Any) -> Any:
        """One typed column per field of `schema=Model`, read by the model from each row of
        `frame`; see `agentrt_jupyter.batch.semantic`."""
        return operator("extract").run(self, frame, template, **options)
