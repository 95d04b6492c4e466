"""One agent on the runtime loop: its turn queue, the tool loop, cancel, idle and wake-up.

Turns of one agent run one after another, each in its own task so that cancelling a
turn never touches the queue. Each model call streams in a pump task whose only await
is the SDK's iteration: cancelling that task closes the socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from .backends.base import Backend, ModelChunk, ModelRequest, QuotaHit
from .config import AgentConfig
from .content import FunctionCallPart, FunctionResponsePart, Part, TextPart, part_to_json
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
    ConversationInUse,
    QuotaExceeded,
    ReplyBlocked,
    StoreError,
    StreamBroken,
    ToolStepLimit,
    TurnError,
    TurnStoreError,
)
from .events import TextDelta, ThoughtDelta, ToolCall, ToolResult, UsageUpdate, Waiting
from .handle import Turn, TurnResult, cancelled_error
from .store import CachedReply
from .tools import Tool

if TYPE_CHECKING:
    from .runtime import _Core

log = logging.getLogger("agentrt_jupyter")

AgentState = Literal["idle", "running", "shutdown", "disconnected"]
RETRIED_STATUS_CODES = frozenset({408, 500, 502, 503, 504})
"""HTTP codes our layer retries (the SDK's own retries are off, so each attempt is seen)."""
BLOCKED_FINISH_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
"""Finish reasons that mean the service stopped the reply: never an empty success."""
YIELD_EVERY = 0.005
"""A lone stream parsing buffered chunks yields to the loop at least this often (seconds)."""
CHECKPOINT_EVERY = 1.0
"""A streaming reply is written to the store at least this often (seconds): a crash loses
at most this much text."""
_PIECES = re.compile(r"\s*\S+\s*|\s+")
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

    def reset(self) -> None:
        """Forget a failed attempt that produced nothing, before the next one."""
        self.__init__()  # type: ignore[misc]

    @property
    def produced(self) -> bool:
        """Something reached the consumers: a retry would repeat it."""
        return bool(self.segments or self.calls)

    def parts(self) -> tuple[Part, ...]:
        texts: list[Part] = [
            TextPart("".join(chunks), kind == "thought", signature)
            for kind, chunks, signature in self.segments
        ]
        return (*texts, *self.calls)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return _safe_repr(value)
    return value


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except BaseException as exc:  # a user's __repr__ may raise anything
        return f"<{type(value).__name__} object (repr failed: {type(exc).__name__})>"


def _bounded_response(response: dict[str, Any], limit: int) -> dict[str, Any]:
    """Keep a tool's response under `limit` characters of JSON, saying so to the model."""
    text = json.dumps(response, default=_safe_repr)
    if len(text) <= limit:
        return response
    return {
        "truncated": f"the result was {len(text):,} characters of JSON; only the first "
        f"{limit:,} are shown",
        "partial_result": text[:limit],
    }


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the tool called exit() or argparse failed"
    try:
        message = str(exc)
    except BaseException:
        message = "(message unavailable)"
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


def _retriable(exc: TurnError) -> bool:
    """A failure before any reply that another attempt may not see (5xx, 408, no connection)."""
    if not isinstance(exc, BackendError):
        return False
    return exc.code in RETRIED_STATUS_CODES or (exc.code is None and exc.status == "UNAVAILABLE")


def _scrubbed(error: TurnError) -> TurnError:
    """Drop the chained SDK/transport exceptions: their requests carry the API key header."""
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    return error


class AgentCore:
    """The loop-side state of one agent."""

    def __init__(self, core: _Core, agent_id: str, name: str, config: AgentConfig) -> None:
        self.core = core
        self.id = agent_id
        self.name = name
        self.config = config
        self.model = core.config.model_for(config.model)
        self.conversation = Conversation()
        self.conversation_id: str | None = None
        """Its conversation in the store (named agents)."""
        self.lost_to: ConversationInUse | None = None
        """Set once another kernel took its conversation over: it takes no more turns
        (they would not be stored), until resumed with take_over."""
        self.state: AgentState = "idle"
        self.queue: collections.deque[Turn] = collections.deque()
        self.active: Turn | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._backend: Backend | None = None
        self._live_call: _CallState | None = None

    @property
    def caching(self) -> bool:
        own = self.config.reply_cache
        return self.core.config.reply_cache if own is None else own

    def check_usable(self) -> None:
        if self.state in ("shutdown", "disconnected"):
            raise AgentShutDown(self.name)
        if self.lost_to is not None:
            raise self.lost_to

    def submit(self, turn: Turn) -> None:
        self.check_usable()
        self.queue.append(turn)
        self.idle.clear()
        self.wakeup.set()
        self.core.changed()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"agent:{self.name}")

    def is_idle(self) -> bool:
        return self.active is None and not self.queue

    def streaming_usage(self) -> Usage:
        """The running usage of the call streaming now (not yet in the ledger)."""
        call = self._live_call
        return call.usage if call is not None else Usage()

    async def _work(self) -> None:
        try:
            while self.queue:
                turn = self.queue.popleft()
                self.active = turn
                self.state = "running"
                self.core.changed()
                turn.task = asyncio.create_task(self._run_turn(turn), name=f"turn:{self.name}")
                try:
                    await asyncio.wait([turn.task])
                except asyncio.CancelledError:
                    turn.task.cancel()
                    await asyncio.wait([turn.task])
                    raise
                finally:
                    self.active = None
                    self.core.changed()
                    if not turn.task.cancelled() and turn.task.exception() is not None:
                        log.error("turn of %s raised", self.name, exc_info=turn.task.exception())
                    if not turn.finished:  # cancelled before its first step
                        self._finish_unstarted(turn)
        finally:
            if self.state == "running":
                self.state = "idle"
            if not self.queue:
                self.idle.set()

    def cancel_active(self) -> bool:
        """Cancel the running turn, or the next one if it is queued but not yet started.

        Queued turns behind it still run afterwards. A turn is "active" from `submit`:
        `chat()` then `cancel()` at once must stop that turn, not miss it.
        """
        turn = self.active
        if turn is not None and turn.task is not None and not turn.finished:
            turn.task.cancel()
            return True
        if self.queue:  # none running, or the last one just ended: the next is the one
            self.cancel_turn(self.queue[0])
            return True
        return False

    def cancel_turn(self, turn: Turn) -> None:
        if turn in self.queue:
            self.queue.remove(turn)
            self._finish_unstarted(turn)
            if self.is_idle():
                self.idle.set()
        elif turn is self.active and turn.task is not None:
            turn.task.cancel()

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
        await self.cancel_all()
        self.idle.set()
        self.wakeup.set()

    async def cancel_all(self) -> None:
        """Cancel every queued and running turn and wait until the worker has finished."""
        while self.queue:
            self._finish_unstarted(self.queue.popleft())
        self.cancel_active()
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def _record(self, message: ConversationMessage) -> None:
        self.conversation.append(message)
        self.core.persist_message(self, message)

    def _ledger(self, entry: LedgerEntry) -> None:
        self.conversation.ledger.append(entry)
        self.core.persist_ledger(self, entry)

    async def _run_turn(self, turn: Turn) -> None:
        turn.started_at = time.monotonic()
        call: _CallState | None = None
        status: MessageStatus = "complete"
        error: TurnError | None = None
        finish_reason: str | None = None
        started = False
        try:
            await self._maybe_compact(turn)
            turn.number = self.conversation.start_turn()
            self._record(ConversationMessage("user", turn.parts, turn.number))
            started = True
            steps = 0
            while True:
                call = _CallState()
                await self._call_model(turn, call, steps)
                finish_reason = call.finish_reason
                truncated = finish_reason is None
                blocked = finish_reason in BLOCKED_FINISH_REASONS
                self._record(
                    ConversationMessage(
                        "model",
                        call.parts(),
                        turn.number,
                        status="incomplete" if truncated else "error" if blocked else "complete",
                        usage=call.usage,
                        model=self.model,
                        finish_reason=finish_reason,
                    )
                )
                calls, call = call.calls, None
                if truncated:
                    raise StreamBroken("the reply stream ended without a finish reason (truncated)")
                if blocked:
                    raise ReplyBlocked(
                        f"the service stopped the reply (finish reason {finish_reason}): "
                        "rephrase the prompt or change the safety settings",
                        finish_reason=str(finish_reason),
                    )
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
        except StoreError as exc:
            status = "error"
            error = exc if isinstance(exc, TurnError) else TurnStoreError(exc, agent=self.name)
            self.core.store_failed(exc)
        except ConversationInUse as exc:  # another kernel took this conversation over
            status = "error"
            error = TurnStoreError(exc, agent=self.name)
            self.lost_to = exc
        except TurnError as exc:
            status = "incomplete" if isinstance(exc, StreamBroken) else "error"
            error = exc
        except Exception as exc:  # a bug of ours must not kill the loop or lose the turn
            log.exception("turn of %s failed", self.name)
            status = "error"
            error = BackendError(f"internal error: {exc.__class__.__name__}: {exc}")
        if error is not None:
            error = _scrubbed(error)
            error.partial_text = "".join(turn.text_parts)
            error.agent = self.name
            if started:
                try:
                    self._close_turn_record(turn, call, status)
                except (StoreError, ConversationInUse) as exc:
                    log.warning("the store failed while closing a turn of %s: %s", self.name, exc)
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
                saved_tokens=turn.saved_tokens,
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
        """One API call with quota waits and retries; the ledger gets a row per HTTP attempt.

        The SDK's own retries are off, so every attempt is visible here and cancellable.
        Only a failure before anything streamed is retried: a retry never repeats text.
        """
        request = request or self._request()
        key = reply_key(request, self.core.endpoint_label(self.config)) if self.caching else None
        if key is not None and not turn.refresh:
            recorded = self.core.cache_get(key)
            if recorded is not None:
                await self._replay(recorded, turn, call, index)
                return
        backend = await self.backend()
        registry = self.core.quota
        config = self.core.config
        http_attempt = 0
        # Waits that did not help count against quota_max_retries: each of our own 429s,
        # and each wait for the key during which another agent's retry was limited again
        # and nobody got through (the key stays blocked). Waiting behind other agents'
        # first 429s is not counted, so a storm of one 429 per agent completes.
        quota_waits = own_hits = 0
        start = registry.state(backend.credential)
        seen_successes, seen_retry_hits = start.successes, start.retry_hits
        own_hit = False
        while True:
            waited = 0.0
            while (blocked := registry.state(backend.credential)).blocked:
                stuck = blocked.successes == seen_successes and blocked.retry_hits > seen_retry_hits
                if not own_hit and stuck:
                    if quota_waits >= config.quota_max_retries:
                        raise QuotaExceeded(
                            _quota_advice("minute", quota_waits, None),
                            retry_after=blocked.seconds_left,
                            quota_id=blocked.last_quota_id,
                            scope="minute",
                        )
                    quota_waits += 1
                own_hit, seen_successes = False, blocked.successes
                seen_retry_hits = blocked.retry_hits
                if blocked.seconds_left > config.quota_max_wait:
                    raise _past_max_wait(
                        blocked.seconds_left, config.quota_max_wait, blocked.last_quota_id
                    )
                reason = f"rate limited ({blocked.last_quota_id or 'shared credential'})"
                turn.publish(Waiting(blocked.seconds_left, reason))
                waited += await registry.wait_once(backend.credential)
            own_hit = False
            sent, wall = time.monotonic(), utcnow()
            status: CallStatus = "error"
            error_text: str | None = None
            pause = 0.0
            try:
                await self._stream(backend, request, turn, call)
                registry.record_success(backend.credential)
                if call.finish_reason is None:  # the turn fails as truncated
                    if not call.produced:
                        raise BackendError(
                            "the service ended the reply with no content and no finish reason "
                            "(is the endpoint a Gemini API?)",
                            status="BAD_RESPONSE",
                        )
                    status, error_text = "error", "the stream ended without a finish reason"
                    return
                status = "ok"
                if key is not None and call.finish_reason not in (None, *BLOCKED_FINISH_REASONS):
                    reply = CachedReply(call.parts(), call.usage, call.finish_reason, self.model)
                    self.core.cache_put(self, key, reply)
                return
            except QuotaHit as hit:
                status, error_text = "rate-limited", hit.info.message
                pause = self._quota_pause(
                    hit, call, quota_waits, sent, backend.credential, retry=own_hits > 0
                )
                quota_waits, own_hits, own_hit = quota_waits + 1, own_hits + 1, True
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            except TurnError as exc:
                error_text = str(exc)
                http_attempt += 1
                last = http_attempt >= config.http_retry_attempts
                if call.produced or last or not _retriable(exc):
                    raise
                status = "retried"
                pause = min(8.0, 0.5 * 2 ** (http_attempt - 1)) * (1 + random.uniform(0, 0.25))
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
                        else call.first_chunk_at - sent,
                        duration=time.monotonic() - sent,
                        finish_reason=call.finish_reason,
                        status=status,
                        retry_wait=waited,
                        error=error_text,
                    )
                )
                turn.publish(UsageUpdate(turn.usage))
            call.reset()
            if status == "retried":
                turn.publish(Waiting(pause, f"retrying after: {error_text}"))
                await asyncio.sleep(pause)

    async def _replay(self, reply: CachedReply, turn: Turn, call: _CallState, index: int) -> None:
        """Stream a recorded reply as if it arrived: same parts, nothing billed, one ledger
        row marked `replayed` with the tokens it saved."""
        started, wall = time.monotonic(), utcnow()
        call.first_chunk_at = started
        if turn.first_chunk_at is None:
            turn.first_chunk_at = started
        for part in reply.parts:
            if isinstance(part, TextPart) and part.text:
                for number, piece in enumerate(_PIECES.findall(part.text)):
                    signature = part.thought_signature if number == 0 else None
                    call.add(ModelChunk((TextPart(piece, part.thought, signature),), None), turn)
            else:
                call.add(ModelChunk((part,), None), turn)
            await asyncio.sleep(0)
        call.finish_reason = reply.finish_reason
        saved = reply.usage.total_tokens
        turn.saved_tokens += saved
        self._ledger(
            LedgerEntry(
                agent=self.name,
                turn=turn.number,
                call=index,
                model=reply.model,
                started=wall,
                usage=Usage(),
                time_to_first_chunk=0.0,
                duration=time.monotonic() - started,
                finish_reason=reply.finish_reason,
                status="replayed",
                saved_tokens=saved,
            )
        )
        turn.publish(UsageUpdate(turn.usage))

    def _quota_pause(
        self,
        hit: QuotaHit,
        call: _CallState,
        retries: int,
        sent: float,
        credential: str,
        *,
        retry: bool,
    ) -> float:
        """Record a 429 and say how long to wait, or raise `QuotaExceeded` if waiting won't do."""
        info = hit.info
        config = self.core.config
        if call.produced:
            raise QuotaExceeded(
                "rate limited in the middle of the reply; the partial reply is kept: run the "
                "turn again",
                retry_after=info.retry_after,
                quota_id=info.quota_id,
                scope=info.scope if info.scope != "unknown" else "minute",
            )
        if info.scope not in ("minute", "unknown") or retries >= config.quota_max_retries:
            raise QuotaExceeded(
                _quota_advice(info.scope, retries, info.retry_after),
                retry_after=info.retry_after,
                quota_id=info.quota_id,
                scope=info.scope if info.scope != "unknown" else "minute",
            )
        wait = self.core.quota.record_hit(
            credential,
            info.retry_after,
            scope=info.scope,
            quota_id=info.quota_id,
            sent_at=sent,
            retry=retry,
        )
        if wait > config.quota_max_wait:
            raise _past_max_wait(wait, config.quota_max_wait, info.quota_id)
        return wait

    async def _stream(
        self, backend: Backend, request: ModelRequest, turn: Turn, call: _CallState
    ) -> None:
        """Stream one call in a pump task; cancelling the pump closes the socket.

        The pump applies each chunk itself (no queue and no task switch per chunk) and
        serves the command inbox between chunks. The SDK parses every buffered chunk in
        one task step, so the pump yields to the loop after each chunk while other streams
        run (fairness: a new turn's first chunk is not starved), and at least every
        `YIELD_EVERY` seconds otherwise (a pending cancel is seen at once). A re-arming
        watchdog, not a timeout per chunk, cancels a stalled stream.
        """
        loop = asyncio.get_running_loop()
        core = self.core
        inbox = core.inbox
        idle = core.config.idle_chunk_timeout
        last_chunk = loop.time()
        stalled = False

        async def pump() -> None:
            nonlocal last_chunk
            yielded = checkpointed = last_chunk
            async for chunk in backend.stream(request):
                now = last_chunk = loop.time()
                if call.first_chunk_at is None:
                    call.first_chunk_at = time.monotonic()
                    if turn.first_chunk_at is None:
                        turn.first_chunk_at = call.first_chunk_at
                call.add(chunk, turn)
                core.changed()
                if inbox.pending:
                    inbox.drain()
                if now - checkpointed >= CHECKPOINT_EVERY and call.produced:
                    checkpointed = now
                    draft = ConversationMessage(
                        "model", call.parts(), turn.number, status="incomplete", model=self.model
                    )
                    core.checkpoint(self, draft)
                if core.streams > 1 or now - yielded > YIELD_EVERY:
                    await asyncio.sleep(0)
                    yielded = loop.time()

        def watchdog() -> None:
            nonlocal stalled
            left = last_chunk + idle - loop.time()
            if left > 0:
                alarm[0] = loop.call_later(left, watchdog)
            else:
                stalled = True
                task.cancel()

        core.streams += 1
        self._live_call = call
        task = asyncio.create_task(pump(), name=f"pump:{self.name}")
        alarm = [loop.call_later(idle, watchdog)]
        try:
            await asyncio.wait([task])
            if stalled:
                raise StreamBroken(f"no data from the model for {idle:g} s (idle_chunk_timeout)")
            task.result()
        finally:
            core.streams -= 1
            self._live_call = None
            alarm[0].cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: never "Task exception was never retrieved"

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
                if tool is None:
                    error = f"unknown tool {call.name!r}; available: {sorted(tools)}"
                else:
                    result, error = await self._tool_outcome(tool, call)
                response = (
                    {"error": error}
                    if error
                    else (result if isinstance(result, dict) else {"result": result})
                )
                response = _bounded_response(response, self.core.config.max_tool_result_chars)
                responses.append(FunctionResponsePart(call.name, response, call.id))
                turn.publish(ToolResult(call.id, call.name, result, error))
        finally:
            if responses:
                self._record(ConversationMessage("user", tuple(responses), turn.number))

    async def _tool_outcome(self, tool: Tool, call: FunctionCallPart) -> tuple[Any, str | None]:
        """(result, None) or (None, error text): whatever the tool raises is its own error.

        SystemExit, KeyboardInterrupt, GeneratorExit and a CancelledError the tool raised
        itself are the tool's errors too; only a cancel of this turn propagates.
        """
        confirm = self.config.confirm_tool
        if confirm is not None:
            answer, problem = await _guarded(confirm, call.name, dict(call.args))
            if problem is not None:
                return None, f"the confirmation policy failed: {problem}"
            if not answer:
                return None, "the user declined this tool call"
        limit = self.config.tool_timeout
        try:
            result, problem = await asyncio.wait_for(_guarded(tool.fn, **dict(call.args)), limit)
        except TimeoutError:
            return None, (
                f"the tool did not answer within {limit:g} s (tool_timeout) and was abandoned"
            )
        return (None, problem) if problem is not None else (_jsonable(result), None)

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


def reply_key(request: ModelRequest, endpoint: str = "") -> str:
    """The reply cache's key: a hash of everything that decides the reply.

    Who answers (`endpoint`: a base URL, or the backend's name), model, generation
    settings, system instruction, tool declarations, response schema and the full
    contents sent (thoughts are not sent, so they do not count).
    """
    cfg = request.config
    schema = cfg.response_schema
    if isinstance(schema, type):
        builder = getattr(schema, "model_json_schema", None)
        schema = builder() if callable(builder) else f"{schema.__module__}.{schema.__qualname__}"
    material = {
        "endpoint": endpoint,
        "model": request.model,
        "system": request.system_instruction,
        "settings": [
            cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_output_tokens,
            list(cfg.stop_sequences), cfg.seed, cfg.thinking_budget, cfg.include_thoughts,
            cfg.response_mime_type,
        ],
        "tools": [t.declaration() for t in cfg.tool_list] if request.with_tools else [],
        "schema": schema,
        "contents": [
            [m.role, [part_to_json(p) for p in m.parts if not getattr(p, "thought", False)]]
            for m in request.messages
            if m.role != "summary"
        ],
    }  # fmt: skip
    text = json.dumps(material, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


async def _guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """Run a user's callable (sync on a worker thread, async on the loop) and contain it.

    Returns (value, None) or (None, description of what it raised). A cancel of the
    calling task still propagates; the worker thread of a sync callable is then abandoned
    (it is a daemon thread and its late result is dropped).
    """
    try:
        if asyncio.iscoroutinefunction(fn):
            value = await _own_task(fn(*args, **kwargs))
        else:
            value = await asyncio.to_thread(fn, *args, **kwargs)
            if isinstance(value, Awaitable):
                value = await _own_task(value)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return None, "CancelledError: the tool raised CancelledError itself"
    except BaseException as exc:
        return None, _describe_exception(exc)
    return value, None


async def _own_task(awaitable: Awaitable[Any]) -> Any:
    """Await a user's coroutine in its own task, so whatever it raises stays inside it."""

    async def contained() -> tuple[bool, Any]:
        try:
            return True, await awaitable
        except BaseException as exc:  # SystemExit etc. must not reach the loop
            return False, exc

    task = asyncio.ensure_future(contained())
    try:
        ok, value = await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not ok:
        raise value
    return value


def _past_max_wait(wait: float, max_wait: float, quota_id: str | None) -> QuotaExceeded:
    """The key would be rate limited longer than the turn may wait (`quota_max_wait`)."""
    return QuotaExceeded(
        f"this key is rate limited for {wait:.0f} s more, past quota_max_wait={max_wait:g} s: "
        "try again later or raise quota_max_wait",
        retry_after=wait,
        quota_id=quota_id,
        scope="minute",
    )


def _quota_advice(scope: str, retries: int, retry_after: float | None) -> str:
    if scope == "day":
        return (
            "daily quota used up for this key and model: try tomorrow, another model, or a paid key"
        )
    if scope == "zero":
        return "this model has no quota on this key (limit 0): pick another model or enable billing"
    after = f"; the service asks to wait {retry_after:g} s" if retry_after else ""
    return f"rate limited and still limited after {retries} retries{after}"
