"""The kernel end of the JupyterLab extension: the `agentrt-jupyter` comm target.

The extension (labextension/) opens one comm per kernel and sends typed requests
(`list`, `cancel`, `cancel_all`); every request gets exactly one reply, an error reply
included. While a comm is open the kernel also pushes a `snapshot` after each change of
the agents, fed by the runtime's change signal (`runtime.aio.watch()`): while a reply
streams its tokens count up (at most `1 / PUSH_INTERVAL` pushes a second), and nothing
is sent while nothing happens, so the status bar and sidebar stay live without polling.

Nothing here blocks the kernel: requests are answered by tasks on the kernel's event
loop that await the runtime's async API, so a `cancel_all` sent while an awaiting
`%%agent` cell runs is handled at once (ipykernel >= 7.4). Only the standard library
is imported at module level; the `comm` package is imported when registering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from .listing import AgentRow, agent_rows

if TYPE_CHECKING:
    from ..runtime import AgentInfo, AgentRuntime

__all__ = [
    "TARGET",
    "AgentSnapshot",
    "LabComms",
    "Reply",
    "Request",
    "Snapshot",
    "register_lab_comm",
    "unregister_lab_comm",
]

TARGET = "agentrt-jupyter"
PUSH_INTERVAL = 0.1
"""Least seconds between two pushed snapshots: at most 10 a second while a reply streams."""
CALL_TIMEOUT = 4.0
"""Bound on one runtime call, so the reply beats the frontend's 5 s timeout."""

RequestKind = Literal["list", "cancel", "cancel_all"]
ErrorCode = Literal["bad_request", "no_runtime", "not_found", "timeout", "internal"]
_KINDS: tuple[RequestKind, ...] = ("list", "cancel", "cancel_all")

log = logging.getLogger(__name__)


class _RequestBase(TypedDict):
    id: str
    kind: RequestKind


class Request(_RequestBase, total=False):
    """Frontend -> kernel. `agent` (an id or name) only for `cancel`."""

    agent: str


AgentSnapshot = AgentRow
"""One row of the Agents panel (`listing.agent_row`)."""


class _ReplyBase(TypedDict):
    id: str
    kind: Literal["reply"]
    ok: bool


class Reply(_ReplyBase, total=False):
    """Kernel -> frontend, exactly one per request."""

    agents: list[AgentSnapshot]
    cancelled: int
    error: str
    code: ErrorCode


class Snapshot(TypedDict):
    """Kernel -> frontend, unasked, when the agents change."""

    kind: Literal["snapshot"]
    agents: list[AgentSnapshot]


class _BadRequest(Exception):
    """A request that does not match the protocol."""


def parse_request(data: object) -> Request:
    """Narrow a comm payload to a `Request`, or raise `_BadRequest` saying why."""
    if not isinstance(data, dict):
        raise _BadRequest(f"a request is a JSON object, got {type(data).__name__}")
    request_id = data.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise _BadRequest("a request needs a non-empty string 'id'")
    kind = data.get("kind")
    if kind not in _KINDS:
        raise _BadRequest(f"unknown kind {kind!r}; expected one of {list(_KINDS)}")
    request = Request(id=request_id, kind=kind)
    if kind == "cancel":
        agent = data.get("agent")
        if not isinstance(agent, str) or not agent:
            raise _BadRequest("'cancel' needs a string 'agent' (its id or name)")
        request["agent"] = agent
    return request


def _change_key(agents: list[AgentSnapshot]) -> object:
    """What makes a snapshot worth pushing: any change but sub-second running times."""
    return [
        ({**a, "running_for": None}, None if a["running_for"] is None else int(a["running_for"]))
        for a in agents
    ]


def _error(request_id: str, code: ErrorCode, message: str) -> Reply:
    return Reply(id=request_id, kind="reply", ok=False, error=message, code=code)


class LabComms:
    """The open comms of one kernel, the requests in flight and the snapshot pusher
    (held by the kernel's session)."""

    def __init__(self, get_runtime: Callable[[], AgentRuntime | None]) -> None:
        self.get_runtime = get_runtime
        self.comms: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.pusher: asyncio.Task[None] | None = None
        self.last_key: object = None

    def on_open(self, comm: Any, msg: dict[str, Any]) -> None:
        # No runtime yet (or any more): close at once; the frontend reads a closed comm
        # as "no runtime" and opens again after the next cell.
        if self.get_runtime() is None:
            comm.close(data={"kind": "closed", "error": "no agentrt runtime in this kernel"})
            return
        self.comms[comm.comm_id] = comm
        comm.on_msg(self.on_msg)
        comm.on_close(self.on_close)
        # A fresh pusher sends the agents as they are now (to every comm), then follows.
        self.last_key = None
        if self.pusher is not None:
            self.pusher.cancel()
        self.pusher = self._spawn(self._push_loop(), inline=False)

    def on_close(self, msg: dict[str, Any]) -> None:
        comm_id = msg.get("content", {}).get("comm_id")
        self.comms.pop(comm_id, None)
        if not self.comms and self.pusher is not None:
            self.pusher.cancel()
            self.pusher = None

    def on_msg(self, msg: dict[str, Any]) -> None:
        content = msg.get("content", {})
        comm = self.comms.get(content.get("comm_id"))
        if comm is None:
            return
        data = content.get("data")
        try:
            request = parse_request(data)
        except _BadRequest as exc:
            raw_id = data.get("id") if isinstance(data, dict) else None
            request_id = raw_id if isinstance(raw_id, str) else ""
            self._send(comm, _error(request_id, "bad_request", str(exc)))
            return
        self._spawn(self._answer(comm, request))

    def close_all(self) -> None:
        for comm in list(self.comms.values()):
            with contextlib.suppress(Exception):
                comm.close()
        self.comms.clear()
        if self.pusher is not None:
            self.pusher.cancel()
            self.pusher = None

    def _spawn(
        self, coro: Coroutine[Any, Any, None], *, inline: bool = True
    ) -> asyncio.Task[None] | None:
        """Run `coro` on the kernel's loop without waiting for it.

        Every ipykernel dispatches comm messages on its asyncio loop; without one (an
        unusual embedding) there is nothing to push from, so only requests run, inline."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inline:
                asyncio.run(coro)
            else:
                coro.close()
            return None
        task = loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _send(self, comm: Any, message: Reply | Snapshot) -> None:
        if comm.comm_id in self.comms:
            comm.send(data=dict(message))

    async def _answer(self, comm: Any, request: Request) -> None:
        try:
            reply = await asyncio.wait_for(self._reply(request), CALL_TIMEOUT)
        except TimeoutError:
            reply = _error(
                request["id"], "timeout", f"the runtime did not answer in {CALL_TIMEOUT} s"
            )
        except Exception as exc:
            reply = self._failure(request["id"], exc)
        self._send(comm, reply)
        if reply.get("code") == "no_runtime":
            # The frontend reads a closed comm as "no runtime" and opens again later.
            self.close_all()

    @staticmethod
    def _failure(request_id: str, exc: Exception) -> Reply:
        from ..errors import AgentNotFound, RuntimeClosed

        if isinstance(exc, AgentNotFound):
            return _error(request_id, "not_found", f"no agent {exc}")
        if isinstance(exc, RuntimeClosed):
            return _error(request_id, "no_runtime", "the agentrt runtime is shut down")
        log.exception("agentrt-jupyter comm request failed")
        return _error(request_id, "internal", f"{type(exc).__name__}: {exc}")

    async def _reply(self, request: Request) -> Reply:
        runtime = self.get_runtime()
        if runtime is None or runtime.closed:
            return _error(request["id"], "no_runtime", "no agentrt runtime in this kernel")
        kind = request["kind"]
        if kind == "list":
            infos = await runtime.aio.agents()
            return Reply(id=request["id"], kind="reply", ok=True, agents=agent_rows(infos))
        if kind == "cancel":
            cancelled = await runtime.aio.cancel(request["agent"])
            return Reply(id=request["id"], kind="reply", ok=True, cancelled=int(cancelled))
        infos = await runtime.aio.agents()
        running = [i.id for i in infos if i.current_turn is not None]
        results = await asyncio.gather(
            *(runtime.aio.cancel(agent_id) for agent_id in running), return_exceptions=True
        )
        # An agent that ended (or was removed) in between is simply not counted.
        count = sum(1 for result in results if result is True)
        return Reply(id=request["id"], kind="reply", ok=True, cancelled=count)

    async def _push_loop(self) -> None:
        """Push a snapshot after each change of the agents, until the comms or the runtime
        are gone (running times are compared to the second: the frontend ticks them)."""
        from ..errors import RuntimeClosed

        while self.comms:
            runtime = self.get_runtime()
            if runtime is None or runtime.closed:
                self.close_all()
                return
            try:
                async for infos in runtime.aio.watch(PUSH_INTERVAL):
                    self._push(infos)
                    if self.get_runtime() is not runtime:
                        break
            except RuntimeClosed:
                continue
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                continue  # the runtime stopped its loop under our call: look again
            except Exception:
                log.exception("agentrt-jupyter: following the runtime's changes failed")
                self.close_all()
                return

    def _push(self, infos: list[AgentInfo]) -> None:
        agents = agent_rows(infos)
        key = _change_key(agents)
        if key != self.last_key:
            self.last_key = key
            for comm in list(self.comms.values()):
                self._send(comm, Snapshot(kind="snapshot", agents=agents))


def _comm_manager(shell: Any) -> Any:
    manager = getattr(getattr(shell, "kernel", None), "comm_manager", None)
    if manager is not None:
        return manager
    if getattr(shell, "kernel", None) is None:
        return None  # a terminal IPython: no frontend to talk to
    import comm

    return comm.get_comm_manager()


def register_lab_comm(
    shell: Any, get_runtime: Callable[[], AgentRuntime | None]
) -> LabComms | None:
    """Register the `agentrt-jupyter` comm target on `shell`'s kernel; returns its comms
    (the kernel session keeps them), or None without a kernel (plain IPython).

    `get_runtime` is called on each request, so the runtime may be created, replaced or
    shut down later.
    """
    manager = _comm_manager(shell)
    if manager is None:
        return None
    comms = LabComms(get_runtime)
    manager.register_target(TARGET, comms.on_open)
    return comms


def unregister_lab_comm(shell: Any, comms: LabComms) -> None:
    """Close the open comms and remove the target (for `%unload_ext`)."""
    comms.close_all()
    manager = _comm_manager(shell)
    if manager is not None:
        with contextlib.suppress(Exception):
            manager.unregister_target(TARGET, comms.on_open)
