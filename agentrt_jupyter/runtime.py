"""`AgentRuntime`: one thread with its own asyncio loop, reached through one command channel.

The thread is a portal (as anyio's `BlockingPortal`): every call is a command sent into
the loop and answered through its own future — coroutine functions run as tasks
(`run_coroutine_threadsafe`), plain ones through the `Inbox` in one loop callback. All
agent state lives on the loop in `_Core`; `AgentRuntime` (sync) and `AsyncAgentRuntime`
(`runtime.aio`) are thin layers over it, so there is one implementation, and a test keeps
their command lists and signatures the same.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import gc
import importlib
import inspect
import itertools
import logging
import os
import queue
import secrets
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias, TypeVar, overload

from .agent import AgentCore
from .backends import default_backend
from .backends.base import Backend, BackendFactory, Endpoint
from .backends.pump import StreamPacer
from .config import AgentConfig, RuntimeConfig, agent_config
from .content import to_parts
from .conversation import ConversationMessage, LedgerEntry, Usage
from .errors import (
    AgentNotFound,
    BackendError,
    ConversationExists,
    InvalidConfig,
    RuntimeClosed,
    StoreError,
    Timeout,
    WrongThread,
)
from .handle import ChatHandle, Turn, wait_future
from .operators import operator
from .quota import QuotaRegistry, QuotaScope, QuotaState
from .recorder import NullRecorder, Recorder, StoreRecorder
from .store import STORED_SETTINGS, Store, StoredConversation

if TYPE_CHECKING:
    from .server.process import LocalServer

log = logging.getLogger("agentrt_jupyter")
P = ParamSpec("P")
T = TypeVar("T")
_runtime_numbers = itertools.count(1)
HEARTBEAT_SECONDS = 5.0
"""How often a runtime renews its conversations' writer leases."""
FINALIZE_TIMEOUT = 2.0
"""A runtime nobody shut down gets this long to close when it is collected or at exit."""
RETIRED_LEDGER_ROWS = 1_000_000
"""Most ledger rows kept of agents no longer in the runtime (the oldest go first)."""
AgentRef: TypeAlias = "Agent | AsyncAgent | str"
"""What runtime methods accept for an agent: either handle, or its id or name."""


class Inbox:
    """The fast lane for synchronous commands (queries, chat, cancel).

    A command on the loop's ready queue waits behind every callback already there, and
    the SDK parses all buffered chunks of a stream in one task step: under load that is
    seconds. Posted commands are run by a loop callback and also between chunks by
    every stream's pump, so they answer within about one chunk's parse time.
    """

    def __init__(self) -> None:
        self._pending: collections.deque[
            tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future[Any]]
        ] = collections.deque()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def post(self, fn: Callable[..., T], args: tuple[Any, ...]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._pending.append((fn, args, future))
        return future

    def drain(self) -> None:
        """Run what is posted; only on the loop thread."""
        served = False
        while self._pending:
            fn, args, future = self._pending.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            served = True
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
        if served:
            # Let the caller we just answered take the GIL now rather than after the
            # interpreter's switch interval (5 ms) while this loop is busy streaming.
            time.sleep(0)

    def close(self) -> None:
        while self._pending:
            self._pending.popleft()[2].cancel()


class _DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: daemon threads, reused while busy, never joined.

    `asyncio.to_thread` (sync tools, confirm callbacks, the SDK's DNS, netrc and proxy
    lookups, the local server's start) runs here. A call that never returns (a tool
    blocking forever) is abandoned on cancel or shutdown and cannot keep the interpreter
    alive at exit, as the joined workers of a ThreadPoolExecutor would. An idle worker
    takes the next call (a thread start per call costs more than the SDK's lookups) and
    leaves after `IDLE_SECONDS`. Workers know which runtime they serve, so a blocking
    `shutdown()` from inside a tool is refused instead of deadlocking.
    """

    IDLE_SECONDS = 30.0

    def __init__(self, name: str, local: threading.local) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name)  # asyncio wants this type
        self._name = name
        self._local = local
        self._numbers = itertools.count(1)
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._closed = False
        self._waiting: set[threading.Thread] = set()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller decides what a tool's SystemExit means
                future.set_exception(exc)
            else:
                future.set_result(result)

        with self._lock:
            self._calls.put(call)
            if self._idle and not self._closed:
                self._idle -= 1  # an idle worker takes it
                return future
        name = f"{self._name}-worker-{next(self._numbers)}"
        threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        self._local.worker = True
        me = threading.current_thread()
        while True:
            self._waiting.add(me)
            try:
                call = self._calls.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():  # nobody counted on this worker: leave
                        self._idle -= 1
                        self._waiting.discard(me)
                        return
                continue
            finally:
                self._waiting.discard(me)
            if call is None:  # shut down: idle workers leave
                return
            call()
            with self._lock:
                if self._closed:
                    return
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Idle workers leave now; busy ones when their call returns (never joined: an
        abandoned call ends on its own, in a daemon thread)."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, 0
            waiting = list(self._waiting)
        for _ in range(idle):
            self._calls.put(None)
        deadline = time.monotonic() + 1.0
        for thread in waiting:  # idle: they leave at once, so none outlives the runtime
            thread.join(max(0.0, deadline - time.monotonic()))


class _Portal:
    """A named daemon thread running an event loop, and the channel into it.

    Coroutine functions run as tasks; plain functions go through the `Inbox`. `stop`
    ends it within a deadline whatever runs; `stopped` is set when the thread is done.
    """

    def __init__(self, name: str, inbox: Inbox) -> None:
        ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
        self.inbox = inbox
        self.workers = threading.local()
        self.stopped = threading.Event()
        self.cleanup_deadline = 0.0
        self.stopper: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        self.loop = ready.result()
        self.closed = False

    def _run(self, ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.set_default_executor(_DaemonExecutor(self.thread.name, self.workers))
        except BaseException as exc:
            loop.close()
            self.stopped.set()
            ready.set_exception(exc)
            return
        try:
            loop.call_soon(ready.set_result, loop)
            loop.run_forever()
            self.inbox.close()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            left = max(0.05, self.cleanup_deadline - time.monotonic())
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=left))
            with contextlib.suppress(TimeoutError):
                loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), left))
        finally:
            loop.close()
            self.stopped.set()

    def in_worker(self) -> bool:
        """True on one of this runtime's worker threads (a sync tool, a confirm callback)."""
        return bool(getattr(self.workers, "worker", False))

    def stop(self, aclose: Callable[[], Awaitable[None]], timeout: float) -> None:
        """Close what `aclose` closes, then stop the loop: all within `timeout` seconds.

        Past the deadline the loop is stopped anyway and what still runs is cancelled;
        the thread then needs at most a short grace period to end.
        """
        deadline = time.monotonic() + timeout
        self.cleanup_deadline = deadline + 1.0

        async def stop_all() -> None:
            try:
                await asyncio.wait_for(aclose(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("shutdown: closing took longer than %g s; stopping anyway", timeout)
            except Exception:
                log.exception("shutdown: closing failed; stopping anyway")
            finally:
                asyncio.get_running_loop().stop()

        def start() -> None:
            self.stopper = asyncio.ensure_future(stop_all())

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is already closed
            self.stopped.set()

    def on_loop(self) -> bool:
        return threading.current_thread() is self.thread

    @overload
    def submit(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]: ...
    @overload
    def submit(
        self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]: ...
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.closed:
            raise RuntimeClosed("the runtime was shut down; create a new AgentRuntime")
        if inspect.iscoroutinefunction(fn):
            return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop)
        future = self.inbox.post(functools.partial(fn, **kwargs) if kwargs else fn, args)
        self.loop.call_soon_threadsafe(self.inbox.drain)
        return future

    @overload
    def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run on the loop and wait; refused on the loop's own thread (it would deadlock)."""
        if self.on_loop():
            raise WrongThread(
                "a blocking runtime call from the runtime thread would deadlock: "
                "use `await runtime.aio....` there"
            )
        return wait_future(self.submit(fn, *args, **kwargs), None)

    @overload
    async def acall(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def acall(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    async def acall(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.on_loop():
            if self.closed:
                raise RuntimeClosed("the runtime was shut down; create a new AgentRuntime")
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result
        future = self.submit(fn, *args, **kwargs)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and self.closed and not (task and task.cancelling()):
                raise RuntimeClosed("the runtime was shut down while this call waited") from None
            raise


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


class _Core:
    """Everything on the runtime loop: agents, backends, quota, store; each agent's host."""

    def __init__(
        self, config: RuntimeConfig, backend_factory: BackendFactory | None = None
    ) -> None:
        self.config = config
        self._backend_factory = backend_factory or default_backend
        self._default_backends = backend_factory is None
        """Only the default (google-genai) backends use the local model servers and the
        SDK's warm-up; a custom factory gets the endpoint as configured, and no server
        process is started for it."""
        self.quota = QuotaRegistry()
        self.agents: dict[str, AgentCore] = {}
        self.retired_ledger: collections.deque[LedgerEntry] = collections.deque(
            maxlen=RETIRED_LEDGER_ROWS
        )
        """The calls of agents no longer here (deleted, replaced, a map's rows): paid for."""
        self.by_name: dict[str, str] = {}
        self.recorder: Recorder = _open_recorder(config)
        self.heartbeat_task: asyncio.Task[None] | None = None
        self.server: LocalServer | None = None
        self._backends: dict[Endpoint, Backend] = {}
        self._backend_lock: asyncio.Lock | None = None
        self.default_credential: str | None = None
        self.inbox = Inbox()
        self.pacer = StreamPacer()
        self.version = 0
        """Grows at every change a monitor shows (agents, turns, streamed usage)."""
        self._watchers: list[asyncio.Future[None]] = []

    @property
    def store(self) -> Store | None:
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
        key = ref.id if isinstance(ref, Agent | AsyncAgent) else ref
        if not isinstance(key, str):
            raise AgentNotFound(repr(key))
        agent = self.agents.get(key) or self.agents.get(self.by_name.get(key, ""))
        if agent is None:
            raise AgentNotFound(key)
        return agent

    def check_endpoint(self, name: str, config: AgentConfig) -> None:
        """A key goes only to the endpoint it was configured with.

        An agent with its own `base_url` (a resumed one, whose key is never stored)
        must bring its own `api_key`; the runtime's key is not sent to another host.
        """
        if (
            config.base_url is not None
            and config.api_key is None
            and config.base_url != self.config.base_url
        ):
            raise InvalidConfig(
                f"agent {name!r} has its own base_url, so it needs its own api_key "
                "(the runtime's key is only sent to the runtime's endpoint): pass api_key=...",
                field="api_key",
            )

    def endpoint_label(self, config: AgentConfig) -> str:
        """Who answers an agent, for the reply cache: its base URL, or the backend's name
        (the local servers' random ports must not make a restarted kernel miss)."""
        return config.base_url or self.config.base_url or self.config.resolved_backend()

    async def _endpoint(self, config: AgentConfig) -> Endpoint:
        """Where an agent's calls go: its own endpoint, else the runtime's."""
        if config.api_key or config.base_url:
            return Endpoint(
                config.api_key or self.config.resolved_api_key(),
                config.base_url or self.config.base_url,
                config.api_version or self.config.api_version,
            )
        backend = self.config.resolved_backend()
        if backend == "gemini" or not self._default_backends:
            return Endpoint(
                self.config.resolved_api_key(),
                self.config.base_url,
                config.api_version or self.config.api_version,
                provider=backend,
            )
        server = await self._local_server(backend)
        return Endpoint(server.token, server.url, "v1beta", provider=backend)

    async def _local_server(self, engine: str) -> LocalServer:
        if self.server is None:
            from .server.process import LocalServer

            log.info("starting the local model server (%s engine)", engine)
            try:
                self.server = await asyncio.to_thread(
                    LocalServer.start, engine, startup_timeout=self.config.server_startup_timeout
                )
            except RuntimeError as exc:
                raise BackendError(
                    f"the embedded {engine} model server did not start ({exc}). Install the "
                    "[local] extra (see the README), or set GOOGLE_API_KEY to use Gemini",
                    status="UNAVAILABLE",
                ) from exc
        return self.server

    async def backend_for(self, config: AgentConfig) -> Backend:
        if self._backend_lock is None:
            self._backend_lock = asyncio.Lock()
        async with self._backend_lock:
            endpoint = await self._endpoint(config)
            backend = self._backends.get(endpoint)
            if backend is None:
                backend = self._backend_factory(endpoint)
                self._backends[endpoint] = backend
            if not (config.api_key or config.base_url):
                self.default_credential = backend.credential
            return backend

    async def default_backend(self) -> Backend:
        return await self.backend_for(AgentConfig())

    async def warm_up(self) -> None:
        """Import the SDK, build the client and start the local server now, not at the
        first turn, then the SDK models a short turn uses; a failure here is only logged
        (the first turn reports it).

        Between steps the loop runs what queued meanwhile, so a first cell sent during the
        import starts its turn as soon as the import is done, not after the whole warm-up.
        """
        try:
            if not self._default_backends:  # a custom factory's backend: just make it
                await self.default_backend()
                return
            gemini = _import_without_collections(f"{__package__}.backends.gemini")
            await self.default_backend()
            for model in gemini.first_turn_models():
                await asyncio.sleep(0)
                model.model_rebuild()
        except Exception as exc:
            log.info("warm-up failed (the first turn will say why): %s", exc)

    def cache_stats(self) -> dict[str, int]:
        return self.recorder.cache_stats()

    def cache_clear(self) -> None:
        self.recorder.cache_clear()

    def stored(
        self, name: str | None = None, *, everywhere: bool = False
    ) -> list[StoredConversation]:
        """Stored conversations, the one `resume` takes last: the newest that has messages
        (an agent created but never used does not hide an older conversation)."""
        if self.store is None:
            return []
        rows = self.store.conversations(None if everywhere else self.config.namespace)
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
                return
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
        self.check_endpoint(name, config)
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

        Its settings are the stored ones, with `overrides` over them, or `config` whole."""
        if self.store is None:
            raise InvalidConfig(
                "resume needs a store: set RuntimeConfig(store_path=...)", field="store_path"
            )
        stored = self.stored(name)
        if not stored:
            raise AgentNotFound(name)
        self._check_name_free(name)
        loaded = self.store.open(stored[-1].id, take_over=take_over)
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
            self.check_endpoint(name, config)
        except InvalidConfig:
            self.store.release(loaded.id)
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

    def chat(self, ref: AgentRef, parts: Any, refresh: bool = False) -> Turn:
        agent = self.lookup(ref)
        agent.check_usable()
        turn = Turn(agent.name, parts, agent.model)
        turn.refresh = refresh
        agent.submit(turn)
        return turn

    def cancel(self, ref: AgentRef) -> bool:
        return self.lookup(ref).cancel_active()

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
        self.retired_ledger.extend(agent.conversation.ledger)

    def ledger(self) -> list[LedgerEntry]:
        """Every call of this runtime, in the order they started (live agents' and those
        of agents no longer here)."""
        live = [entry for agent in self.agents.values() for entry in agent.conversation.ledger]
        # An agent that continues a retired one's conversation (reconfigured, resumed)
        # carries its rows: each call once.
        shown = set(live)
        gone = [entry for entry in self.retired_ledger if entry not in shown]
        return sorted([*gone, *live], key=lambda entry: entry.started)

    async def wait_for_quota(self, timeout: float | None) -> float:
        backend = await self.default_backend()
        try:
            return await asyncio.wait_for(self.quota.wait(backend.credential), timeout)
        except TimeoutError:
            raise Timeout(f"still rate limited after {timeout} s") from None

    async def record_quota_hit(self, retry_after: float | None, scope: QuotaScope) -> float:
        backend = await self.default_backend()
        return self.quota.record_hit(backend.credential, retry_after, scope=scope)

    async def aclose(self) -> None:
        await asyncio.gather(
            *(agent.stop("shutdown") for agent in self.agents.values()), return_exceptions=True
        )
        for backend in self._backends.values():
            with contextlib.suppress(Exception):
                await backend.aclose()
        self._backends.clear()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None
        self.recorder.close()


def _import_without_collections(module: str) -> Any:
    """Import `module` with the cyclic garbage collector paused, then restored.

    The SDK's import creates a few hundred thousand objects (its ~900 pydantic models),
    and the collections they trigger add a fifth to its ~1 s; pausing them for it alone
    only defers what they would find."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        if collecting:
            gc.enable()


def _holder() -> str:
    """Who writes: the kernel (by its connection file) or the script, for ConversationInUse."""
    kernel = sys.modules.get("ipykernel.connect")
    if kernel is not None:
        with contextlib.suppress(Exception):
            return f"kernel {os.path.basename(kernel.get_connection_file())}"
    return f"python {os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else '-'}"


def _open_recorder(config: RuntimeConfig) -> Recorder:
    """The store's recorder, or one without a store (and why): a broken store file must
    not stop the runtime."""
    if config.store_path is None:
        return NullRecorder()
    try:
        return StoreRecorder(Store(config.store_path, holder=_holder(), busy_timeout=2.0))
    except StoreError as exc:
        log.warning("conversations will not be stored: %s", exc)
        return NullRecorder(exc)


def _finalize(portal: _Portal, core: _Core) -> None:
    """Best-effort stop for a runtime nobody shut down (holds no reference to it)."""
    if portal.closed:
        return
    portal.closed = True
    portal.stop(core.aclose, FINALIZE_TIMEOUT)
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

    async def map(self, frame: Any, template: str, **options: Any) -> Any:
        """`runtime.map` for an event loop; see `agentrt_jupyter.batch.engine.start_map`."""
        return await operator("map").arun(self._runtime, frame, template, **options)


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
        self._core = _Core(self.config, backend_factory)
        self._portal = _Portal(name, self._core.inbox)
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
        return self._core.server

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
        return self._portal.submit(self._core.warm_up)

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
        credential = self._core.default_credential
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
                self._portal.stop(self._core.aclose, timeout)
        if not self._portal.stopped.wait(timeout):
            raise Timeout(f"the runtime thread did not stop within {timeout} s")

    def try_shutdown(self) -> bool:
        """Start the shutdown and return at once (safe anywhere, even inside a tool)."""
        with self._shutdown_lock:
            if self._portal.closed:
                return False
            self._portal.closed = True
            self._finalizer.detach()
            self._portal.stop(self._core.aclose, 10.0)
        return True

    def map(self, frame: Any, template: str, **options: Any) -> Any:
        """Run `template` (`{column}` placeholders) over every row of the DataFrame `frame`
        and return a frame aligned with its index: one independent request per row,
        quota-aware, resumable, budgeted; see `agentrt_jupyter.batch.engine.start_map`."""
        return operator("map").run(self, frame, template, **options)
