"""The runtime's thread and loop, and the one channel into it (as anyio's `BlockingPortal`).

Every command is sent into the loop and answered through its own future: coroutine
functions run as tasks (`run_coroutine_threadsafe`), plain functions through the `Inbox`,
which the loop and every stream's pump drain between chunks. A blocking call from the
loop's own thread is refused (it would deadlock); stopping cancels what remains, then
the thread ends within its deadline.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from .errors import RuntimeClosed, WrongThread
from .handle import wait_future

log = logging.getLogger("agentrt_jupyter")
P = ParamSpec("P")
T = TypeVar("T")


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


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
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


class Portal:
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
        self.release: Callable[[], Awaitable[None]] | None = None
        """What `stop` must close whatever happened before (clients, sockets, files): run
        on the loop after what remains is cancelled, within the cleanup grace period."""
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        self.loop = ready.result()
        self.closed = False

    def _run(self, ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.set_default_executor(DaemonExecutor(self.thread.name, self.workers))
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
            self._release(loop)
            with contextlib.suppress(TimeoutError):
                loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), left))
        finally:
            loop.close()
            self.stopped.set()

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the clients even when `stop`'s timeout cut the graceful close short (else
        their sockets stay open and aiohttp reports unclosed sessions at exit)."""
        if self.release is None:
            return
        left = max(0.05, self.cleanup_deadline - time.monotonic())
        try:
            loop.run_until_complete(asyncio.wait_for(self.release(), left))
        except TimeoutError:
            log.warning("shutdown: closing the clients took longer than %.1f s", left)
        except Exception:
            log.exception("shutdown: closing the clients failed")

    def in_worker(self) -> bool:
        """True on one of this runtime's worker threads (a sync tool, a confirm callback)."""
        return bool(getattr(self.workers, "worker", False))

    def stop(
        self,
        aclose: Callable[[], Awaitable[None]],
        release: Callable[[], Awaitable[None]],
        timeout: float,
    ) -> None:
        """Close what `aclose` closes, then stop the loop: all within `timeout` seconds.

        Past the deadline the loop is stopped anyway and what still runs is cancelled;
        then `release` runs in every case, and the thread ends within a short grace period.
        """
        deadline = time.monotonic() + timeout
        self.cleanup_deadline = deadline + 1.0
        self.release = release

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
