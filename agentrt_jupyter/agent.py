"""One agent on the runtime loop: its turn queue, the tool loop, cancel, idle and wake-up.

Turns of one agent run one after another, each in its own task so that cancelling a
turn never touches the queue. Each model call streams in a pump task whose only await
is the SDK's iteration: cancelling that task closes the socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal

from .backends.base import Backend, ModelChunk, ModelRequest, QuotaHit
from .config import AgentConfig
from .content import FunctionCallPart, FunctionResponsePart, Part, TextPart
from .conversation import (
    CallStatus,
    Conversation,
    ConversationMessage,
    LedgerEntry,
    MessageStatus,
    Usage,
    dangling_calls,
    utcnow,
)
from .errors import (
    AgentShutDown,
    BackendError,
    QuotaExceeded,
    StreamBroken,
    ToolStepLimit,
    TurnError,
)
from .events import TextDelta, ThoughtDelta, ToolCall, ToolResult, UsageUpdate, Waiting
from .handle import Turn, TurnResult, cancelled_error
from .tools import call_tool

if TYPE_CHECKING:
    from .runtime import _Core

log = logging.getLogger("agentrt_jupyter")

AgentState = Literal["idle", "running", "shutdown", "disconnected"]
SUMMARY_PROMPT = (
    "Summarise the conversation so far for your own later use: the facts, decisions, "
    "open questions and anything the user asked you to remember. Be concise."
)


class _CallState:
    """What one model call has produced so far (kept for a partial record on cancel)."""

    def __init__(self) -> None:
        self.segments: list[tuple[str, list[str], bytes | None]] = []
        self.calls: list[FunctionCallPart] = []
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.first_chunk_at: float | None = None

    def add(self, chunk: ModelChunk, turn: Turn) -> None:
        for part in chunk.parts:
            if isinstance(part, FunctionCallPart):
                self.calls.append(part)
            elif isinstance(part, TextPart):
                kind = "thought" if part.thought else "text"
                if self.segments and self.segments[-1][0] == kind and not part.thought_signature:
                    self.segments[-1][1].append(part.text)
                else:
                    self.segments.append((kind, [part.text], part.thought_signature))
                if part.thought:
                    turn.thought_parts.append(part.text)
                    turn.publish(ThoughtDelta(part.text))
                elif part.text:
                    turn.text_parts.append(part.text)
                    turn.publish(TextDelta(part.text))
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    def parts(self) -> tuple[Part, ...]:
        texts: list[Part] = [
            TextPart("".join(chunks), kind == "thought", signature)
            for kind, chunks, signature in self.segments
        ]
        return (*texts, *self.calls)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


class AgentCore:
    """The loop-side state of one agent."""

    def __init__(self, core: _Core, agent_id: str, name: str, config: AgentConfig) -> None:
        self.core = core
        self.id = agent_id
        self.name = name
        self.config = config
        self.model = core.config.model_for(config.model)
        self.conversation = Conversation()
        self.state: AgentState = "idle"
        self.queue: collections.deque[Turn] = collections.deque()
        self.active: Turn | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._backend: Backend | None = None

    def check_usable(self) -> None:
        if self.state in ("shutdown", "disconnected"):
            raise AgentShutDown(self.name)

    def submit(self, turn: Turn) -> None:
        self.check_usable()
        self.queue.append(turn)
        self.idle.clear()
        self.wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"agent:{self.name}")

    def is_idle(self) -> bool:
        return self.active is None and not self.queue

    async def _work(self) -> None:
        try:
            while self.queue:
                turn = self.queue.popleft()
                self.active = turn
                self.state = "running"
                turn.task = asyncio.create_task(self._run_turn(turn), name=f"turn:{self.name}")
                try:
                    await asyncio.wait([turn.task])
                except asyncio.CancelledError:
                    turn.task.cancel()
                    await asyncio.wait([turn.task])
                    raise
                finally:
                    self.active = None
                    if not turn.finished:  # cancelled before its first step
                        self._finish_unstarted(turn)
        finally:
            if self.state == "running":
                self.state = "idle"
            if not self.queue:
                self.idle.set()

    def cancel_active(self) -> bool:
        """Cancel the running turn; queued turns still run afterwards."""
        turn = self.active
        if turn is None or turn.task is None or turn.task.done():
            return False
        turn.task.cancel()
        return True

    def cancel_turn(self, turn: Turn) -> None:
        if turn in self.queue:
            self.queue.remove(turn)
            self._finish_unstarted(turn)
            if self.is_idle():
                self.idle.set()
        elif turn is self.active:
            self.cancel_active()

    def _finish_unstarted(self, turn: Turn) -> None:
        turn.finish(
            TurnResult(
                self.name,
                0,
                "cancelled",
                "",
                "",
                Usage(),
                None,
                turn.model,
                None,
                0.0,
                0,
                cancelled_error(self.name, ""),
            )
        )

    async def stop(self, state: AgentState) -> None:
        """Shut down: queued turns are cancelled, the running one too, then wait for it."""
        if self.state in ("shutdown", "disconnected"):
            return
        self.state = state
        while self.queue:
            self._finish_unstarted(self.queue.popleft())
        self.cancel_active()
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.idle.set()
        self.wakeup.set()

    def _record(self, message: ConversationMessage) -> None:
        self.conversation.append(message)
        self.core.persist_message(self, message)

    def _ledger(self, entry: LedgerEntry) -> None:
        self.conversation.ledger.append(entry)
        self.core.persist_ledger(self, entry)

    async def _run_turn(self, turn: Turn) -> None:
        turn.started_at = time.monotonic()
        await self._maybe_compact(turn)
        turn.number = self.conversation.start_turn()
        self.core.persist_agent(self)
        self._record(ConversationMessage("user", turn.parts, turn.number))
        call: _CallState | None = None
        status: MessageStatus = "complete"
        error: TurnError | None = None
        finish_reason: str | None = None
        try:
            steps = 0
            while True:
                call = _CallState()
                await self._call_model(turn, call, steps)
                finish_reason = call.finish_reason
                truncated = finish_reason is None
                self._record(
                    ConversationMessage(
                        "model",
                        call.parts(),
                        turn.number,
                        status="incomplete" if truncated else "complete",
                        usage=call.usage,
                        model=self.model,
                        finish_reason=finish_reason,
                    )
                )
                calls, call = call.calls, None
                if truncated:
                    raise StreamBroken("the reply stream ended without a finish reason (truncated)")
                if not calls:
                    break
                if steps >= self.config.max_tool_steps:
                    raise ToolStepLimit(
                        f"the model asked for tools after {steps} steps; "
                        f"max_tool_steps={self.config.max_tool_steps}"
                    )
                steps += 1
                await self._run_tools(turn, calls)
        except asyncio.CancelledError:
            status = "cancelled"
            error = cancelled_error(self.name, "".join(turn.text_parts))
        except TurnError as exc:
            status = "incomplete" if isinstance(exc, StreamBroken) else "error"
            error = exc
        except Exception as exc:  # a bug of ours must not kill the loop or lose the turn
            log.exception("turn of %s failed", self.name)
            status = "error"
            error = BackendError(f"internal error: {exc.__class__.__name__}: {exc}")
        if error is not None:
            error.partial_text = "".join(turn.text_parts)
            error.agent = self.name
            self._close_turn_record(turn, call, status)
        turn.ended_at = time.monotonic()
        turn.finish(
            TurnResult(
                agent=self.name,
                turn=turn.number,
                status=status,
                text="".join(turn.text_parts),
                thoughts="".join(turn.thought_parts),
                usage=turn.usage,
                finish_reason=finish_reason,
                model=self.model,
                time_to_first_chunk=None
                if turn.first_chunk_at is None
                else turn.first_chunk_at - turn.started_at,
                duration=turn.ended_at - turn.started_at,
                tool_calls=turn.tool_calls,
                error=error,
            )
        )

    def _close_turn_record(
        self, turn: Turn, call: _CallState | None, status: MessageStatus
    ) -> None:
        """Keep what arrived, and answer any dangling tool call so the next request is valid."""
        if call is not None and (call.segments or call.calls):
            self._record(
                ConversationMessage(
                    "model",
                    call.parts(),
                    turn.number,
                    status=status,
                    usage=call.usage,
                    model=self.model,
                    finish_reason=call.finish_reason,
                )
            )
        dangling = dangling_calls(self.conversation.context())
        if dangling:
            reason = {"cancelled": "cancelled by the user"}.get(status, "not run: the turn failed")
            self._record(
                ConversationMessage(
                    "user",
                    tuple(FunctionResponsePart(c.name, {"error": reason}, c.id) for c in dangling),
                    turn.number,
                    status=status,
                )
            )

    async def backend(self) -> Backend:
        if self._backend is None:
            self._backend = await self.core.backend_for(self.config)
        return self._backend

    def _request(
        self, *, with_tools: bool = True, extra: ConversationMessage | None = None
    ) -> ModelRequest:
        system = self.config.system_instruction
        summary = self.conversation.summary
        if summary:
            note = f"Summary of the earlier conversation:\n{summary}"
            system = f"{system}\n\n{note}" if system else note
        messages = self.conversation.context()
        return ModelRequest(
            model=self.model,
            messages=[*messages, extra] if extra else list(messages),
            system_instruction=system or None,
            config=self.config,
            with_tools=with_tools,
        )

    async def _call_model(
        self, turn: Turn, call: _CallState, index: int, request: ModelRequest | None = None
    ) -> None:
        """One API call with quota waits and retries; the ledger gets a row per attempt."""
        backend = await self.backend()
        registry = self.core.quota
        retries = 0
        while True:
            blocked = registry.state(backend.credential)
            if blocked.blocked:
                reason = f"rate limited ({blocked.last_quota_id or 'shared credential'})"
                turn.publish(Waiting(blocked.seconds_left, reason))
            waited = await registry.wait(backend.credential)
            started, wall = time.monotonic(), utcnow()
            status: CallStatus = "error"
            error_text: str | None = None
            try:
                await self._stream(backend, request or self._request(), turn, call)
                status = "ok"
                registry.record_success(backend.credential)
                return
            except QuotaHit as hit:
                status, error_text = "rate-limited", hit.info.message
                info = hit.info
                retriable = info.scope in ("minute", "unknown")
                if not retriable or retries >= self.core.config.quota_max_retries:
                    raise QuotaExceeded(
                        _quota_advice(info.scope, retries, info.retry_after),
                        retry_after=info.retry_after,
                        quota_id=info.quota_id,
                        scope=info.scope,
                    ) from None
                wait = registry.record_hit(
                    backend.credential, info.retry_after, scope=info.scope, quota_id=info.quota_id
                )
                if wait > self.core.config.quota_max_wait:
                    raise QuotaExceeded(
                        f"rate limited for {wait:.0f} s, more than quota_max_wait",
                        scope=info.scope,
                        retry_after=wait,
                        quota_id=info.quota_id,
                    ) from None
                retries += 1
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            except TurnError as exc:
                error_text = str(exc)
                raise
            finally:
                usage = call.usage
                turn.usage = turn.usage + usage
                self._ledger(
                    LedgerEntry(
                        agent=self.name,
                        turn=turn.number,
                        call=index,
                        model=self.model,
                        started=wall,
                        usage=usage,
                        time_to_first_chunk=None
                        if call.first_chunk_at is None
                        else call.first_chunk_at - started,
                        duration=time.monotonic() - started,
                        finish_reason=call.finish_reason,
                        status=status,
                        retry_wait=waited,
                        error=error_text,
                    )
                )
                turn.publish(UsageUpdate(turn.usage))

    async def _stream(
        self, backend: Backend, request: ModelRequest, turn: Turn, call: _CallState
    ) -> None:
        """Stream one call in a pump task; cancelling the pump closes the socket.

        The pump applies each chunk itself (no queue and no task switch per chunk) and
        serves the command inbox between chunks. A re-arming watchdog, not a timeout
        per chunk, cancels a stalled stream.
        """
        loop = asyncio.get_running_loop()
        inbox = self.core.inbox
        idle = self.core.config.idle_chunk_timeout
        last_chunk = loop.time()
        stalled = False

        async def pump() -> None:
            nonlocal last_chunk
            async for chunk in backend.stream(request):
                last_chunk = loop.time()
                if call.first_chunk_at is None:
                    call.first_chunk_at = time.monotonic()
                    if turn.first_chunk_at is None:
                        turn.first_chunk_at = call.first_chunk_at
                call.add(chunk, turn)
                if inbox.pending:
                    inbox.drain()

        def watchdog() -> None:
            nonlocal stalled
            left = last_chunk + idle - loop.time()
            if left > 0:
                alarm[0] = loop.call_later(left, watchdog)
            else:
                stalled = True
                task.cancel()

        task = asyncio.create_task(pump(), name=f"pump:{self.name}")
        alarm = [loop.call_later(idle, watchdog)]
        try:
            await asyncio.wait([task])
            if stalled:
                raise StreamBroken(f"no data from the model for {idle:g} s (idle_chunk_timeout)")
            task.result()
        finally:
            alarm[0].cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def _run_tools(self, turn: Turn, calls: list[FunctionCallPart]) -> None:
        tools = {t.name: t for t in self.config.tool_list}
        responses: list[FunctionResponsePart] = []
        try:
            for call in calls:
                turn.tool_calls += 1
                turn.publish(ToolCall(call.id, call.name, call.args))
                result: Any = None
                error: str | None = None
                tool = tools.get(call.name)
                try:
                    if tool is None:
                        error = f"unknown tool {call.name!r}; available: {sorted(tools)}"
                    elif not await self._confirmed(call):
                        error = "the user declined this tool call"
                    else:
                        result = _jsonable(await call_tool(tool, dict(call.args)))
                except Exception as exc:  # the tool's or the confirm policy's own error
                    error = f"{exc.__class__.__name__}: {exc}"
                response = (
                    {"error": error}
                    if error
                    else (result if isinstance(result, dict) else {"result": result})
                )
                responses.append(FunctionResponsePart(call.name, response, call.id))
                turn.publish(ToolResult(call.id, call.name, result, error))
        finally:
            if responses:
                self._record(ConversationMessage("user", tuple(responses), turn.number))

    async def _confirmed(self, call: FunctionCallPart) -> bool:
        confirm = self.config.confirm_tool
        if confirm is None:
            return True
        if asyncio.iscoroutinefunction(confirm):
            return bool(await confirm(call.name, dict(call.args)))
        answer = await asyncio.to_thread(confirm, call.name, dict(call.args))
        if isinstance(answer, Awaitable):
            answer = await answer
        return bool(answer)

    async def _maybe_compact(self, turn: Turn) -> None:
        """Summarise older turns once the context passed `compaction_threshold` tokens."""
        threshold = self.config.compaction_threshold
        context = self.conversation.context()
        if threshold is None or len(context) < 2:
            return
        last = next((e for e in reversed(self.conversation.ledger) if e.status == "ok"), None)
        if last is None or last.usage.prompt_tokens + last.usage.candidates_tokens < threshold:
            return
        call = _CallState()
        request = self._request(
            with_tools=False,
            extra=ConversationMessage("user", (TextPart(SUMMARY_PROMPT),), turn.number),
        )
        silent = Turn(self.name, (), self.model)
        silent.number = self.conversation.turn_seq + 1
        try:
            await self._call_model(silent, call, -1, request)
        except TurnError as exc:
            log.warning("compaction of %s skipped: %s", self.name, exc)
            return
        finally:
            turn.usage = turn.usage + silent.usage
        summary = "".join(silent.text_parts).strip()
        if summary:
            index = self.conversation.record_compaction(summary, self.conversation.turn_seq)
            self.core.persist_message(self, self.conversation.messages[index])
            self.core.persist_agent(self)


def _quota_advice(scope: str, retries: int, retry_after: float | None) -> str:
    if scope == "day":
        return (
            "daily quota used up for this key and model: try tomorrow, another model, or a paid key"
        )
    if scope == "zero":
        return "this model has no quota on this key (limit 0): pick another model or enable billing"
    after = f"; the service asks to wait {retry_after:g} s" if retry_after else ""
    return f"rate limited and still limited after {retries} retries{after}"
