"""One agent on the runtime loop: its turn queue, the tool loop, cancel, idle and wake-up.

Turns of one agent run one after another, each in its own task so that cancelling a
turn never touches the queue. Each model step is one call through the backend seam
(`backends/`: reply-cache replay, then retries and the quota gate, then the provider's
backend, streamed in a pump task whose cancel closes the socket). The agent reaches its
runtime only through `AgentHost`, and its store only through the host's `Recorder`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from .backends.base import (
    BLOCKED_FINISH_REASONS,
    Attempt,
    Backend,
    ModelCaller,
    ModelChunk,
    ModelRequest,
    Reply,
)
from .backends.cache import ReplayingCaller
from .backends.pump import StreamPacer
from .backends.retry import RetryingCaller, RetryPolicy
from .backends.switch import sendable
from .config import AgentConfig, RuntimeConfig, provider_of
from .content import FunctionCallPart, FunctionResponsePart, TextPart
from .conversation import (
    Conversation,
    ConversationMessage,
    LedgerEntry,
    MessageStatus,
    Usage,
    dangling_calls,
)
from .errors import (
    AgentShutDown,
    BackendError,
    ConversationInUse,
    ReplyBlocked,
    StoreError,
    StreamBroken,
    ToolStepLimit,
    TurnError,
    UsageProblem,
)
from .events import TextDelta, ThoughtDelta, UsageUpdate, Waiting
from .handle import Turn, TurnResult, cancelled_error
from .quota import QuotaRegistry
from .recorder import Recorder
from .store import TEAM_SCOPE, CachedReply
from .toolcalls import answer_calls

__all__ = ["BLOCKED_FINISH_REASONS", "AgentCore", "AgentHost"]

log = logging.getLogger("agentrt_jupyter")

AgentState = Literal["idle", "running", "shutdown", "disconnected"]
CHECKPOINT_EVERY = 1.0
"""A streaming reply is written to the store at least this often (seconds): a crash loses
at most this much text."""
CHARS_PER_TOKEN = 4
"""A context's size in tokens estimated from its characters, where no usage is reported."""
SUMMARY_PROMPT = (
    "Summarise the conversation so far for your own later use: the facts, decisions, "
    "open questions and anything the user asked you to remember. Be concise."
)


class AgentHost(Protocol):
    """What an agent needs from the runtime that hosts it (`registry.AgentRegistry` is one)."""

    @property
    def config(self) -> RuntimeConfig: ...

    @property
    def quota(self) -> QuotaRegistry:
        """Rate limits per credential, shared by every agent of the runtime."""
        ...

    @property
    def recorder(self) -> Recorder:
        """Where conversations and recorded replies are kept."""
        ...

    @property
    def pacer(self) -> StreamPacer:
        """The model streams in flight on the loop (for the pumps' fairness)."""
        ...

    async def backend_for(self, config: AgentConfig) -> Backend:
        """The backend of the agent's endpoint (made once per endpoint, closed by the host)."""
        ...

    def endpoint_label(self, config: AgentConfig) -> str:
        """Who answers the agent, for the reply cache's key."""
        ...

    def serve_commands(self) -> None:
        """Answer the commands posted meanwhile (called between chunks of a stream)."""
        ...

    def changed(self) -> None:
        """Something a monitor shows changed (cheap; called per chunk)."""
        ...


def _scrubbed(error: TurnError) -> TurnError:
    """Drop the chained SDK/transport exceptions: their requests carry the API key header."""
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    return error


@dataclass
class _TurnProgress:
    """How far a turn got: whether its user message is recorded, the reply still open."""

    started: bool = False
    reply: Reply | None = None
    finish_reason: str | None = None


class _CallFollower:
    """Follows one model call for a turn: shows chunks, records each attempt's row."""

    __slots__ = ("_agent", "_checkpointed", "_index", "_turn")

    def __init__(self, agent: AgentCore, turn: Turn, index: int) -> None:
        self._agent = agent
        self._turn = turn
        self._index = index
        self._checkpointed = time.monotonic()

    def on_chunk(self, chunk: ModelChunk, reply: Reply) -> None:
        turn = self._turn
        if turn.first_chunk_at is None:
            turn.first_chunk_at = reply.first_chunk_at
        for part in chunk.parts:
            if not isinstance(part, TextPart) or not part.text:
                continue
            if part.thought:
                turn.thought_parts.append(part.text)
                turn.publish(ThoughtDelta(part.text))
            else:
                turn.text_parts.append(part.text)
                turn.publish(TextDelta(part.text))
        host = self._agent.host
        host.changed()
        host.serve_commands()
        now = time.monotonic()
        if now - self._checkpointed >= CHECKPOINT_EVERY and reply.produced:
            self._checkpointed = now
            self._agent.checkpoint(turn, reply)

    def on_waiting(self, seconds: float, reason: str) -> None:
        self._turn.publish(Waiting(seconds, reason))

    def on_attempt(self, attempt: Attempt) -> None:
        turn = self._turn
        turn.usage = turn.usage + attempt.usage
        turn.saved_tokens += attempt.saved_tokens
        turn.replayed_calls += attempt.status == "replayed"
        self._agent.ledger(attempt.entry(self._agent.name, turn.number, self._index))
        turn.publish(UsageUpdate(turn.usage))


class _AgentReplies:
    """The reply cache as one agent uses it (a recorded reply names its conversation)."""

    __slots__ = ("_agent",)

    def __init__(self, agent: AgentCore) -> None:
        self._agent = agent

    def get(self, key: str) -> CachedReply | None:
        return self._agent.host.recorder.cached(key, self._agent.cache_scope)

    def put(self, key: str, reply: CachedReply) -> None:
        agent = self._agent
        agent.host.recorder.cache(key, reply, agent.conversation_id, agent.cache_scope)


class AgentCore:
    """The loop-side state of one agent."""

    def __init__(self, host: AgentHost, agent_id: str, name: str, config: AgentConfig) -> None:
        self.host = host
        self.id = agent_id
        self.name = name
        self.config = config
        self.model = host.config.model_for(config.model)
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
        self._live_call: Reply | None = None
        self._caller = self._make_caller()

    def _make_caller(self) -> ModelCaller:
        host = self.host
        caller: ModelCaller = RetryingCaller(
            self.backend, host.quota, RetryPolicy.of(host.config), host.pacer
        )
        if self.caching:
            caller = ReplayingCaller(caller, _AgentReplies(self), host.endpoint_label(self.config))
        return caller

    def reconfigure(self, config: AgentConfig) -> None:
        """New settings from the next turn on (call while idle); the conversation stays."""
        self.config = config
        self.model = self.host.config.model_for(config.model)
        self._backend = None  # its endpoint may be another one now
        self._caller = self._make_caller()

    @property
    def caching(self) -> bool:
        own = self.config.reply_cache
        return self.host.config.reply_cache if own is None else own

    @property
    def cache_scope(self) -> str | None:
        """The reply cache's scope: None for the user's own, `TEAM_SCOPE` for the team's."""
        own = self.config.cache_scope
        return TEAM_SCOPE if (own or self.host.config.cache_scope) == "team" else None

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
        self.host.changed()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"agent:{self.name}")

    def is_idle(self) -> bool:
        return self.active is None and not self.queue

    def streaming_usage(self) -> Usage:
        """The running usage of the call streaming now (not yet in the ledger)."""
        call = self._live_call
        reported = call.reported if call is not None else None
        return reported if reported is not None else Usage()

    async def _work(self) -> None:
        try:
            while self.queue:
                turn = self.queue.popleft()
                self.active = turn
                self.state = "running"
                self.host.changed()
                turn.task = asyncio.create_task(self._run_turn(turn), name=f"turn:{self.name}")
                try:
                    await asyncio.wait([turn.task])
                except asyncio.CancelledError:
                    turn.task.cancel()
                    await asyncio.wait([turn.task])
                    raise
                finally:
                    self.active = None
                    self.host.changed()
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

    def _stored(self) -> str | None:
        """Its stored conversation, while it is still this agent's to write."""
        return self.conversation_id if self.lost_to is None else None

    def _record(self, message: ConversationMessage) -> None:
        self.conversation.append(message)
        if (conversation := self._stored()) is not None:
            self.host.recorder.message(conversation, message)

    def ledger(self, entry: LedgerEntry) -> None:
        """Add one API call's row (the ledger survives `clear_history`)."""
        self.conversation.ledger.append(entry)
        if (conversation := self._stored()) is not None:
            self.host.recorder.ledger(conversation, entry)

    def checkpoint(self, turn: Turn, reply: Reply) -> None:
        """Keep the reply streamed so far: a crash loses at most what came since."""
        if (conversation := self._stored()) is not None:
            draft = ConversationMessage(
                "model", reply.parts(), turn.number, status="incomplete", model=self.model
            )
            self.host.recorder.checkpoint(conversation, draft)

    async def _run_turn(self, turn: Turn) -> None:
        turn.started_at = time.monotonic()
        progress = _TurnProgress()
        status: MessageStatus = "complete"
        error: TurnError | None = None
        try:
            await self._steps(turn, progress)
        except asyncio.CancelledError:
            status = "cancelled"
            error = cancelled_error(self.name, "".join(turn.text_parts))
        except Exception as exc:
            status, error = self._failure(exc)
        if error is not None:
            self._close_failed(turn, progress, status, error)
        turn.ended_at = time.monotonic()
        turn.finish(
            TurnResult(
                agent=self.name,
                turn=turn.number,
                status=status,
                text="".join(turn.text_parts),
                thoughts="".join(turn.thought_parts),
                usage=turn.usage,
                finish_reason=progress.finish_reason,
                model=self.model,
                time_to_first_chunk=None
                if turn.first_chunk_at is None
                else turn.first_chunk_at - turn.started_at,
                duration=turn.ended_at - turn.started_at,
                tool_calls=turn.tool_calls,
                error=error,
                saved_tokens=turn.saved_tokens,
                replayed_calls=turn.replayed_calls,
                logprob=turn.logprob,
            )
        )

    async def _steps(self, turn: Turn, progress: _TurnProgress) -> None:
        """The turn's model calls and tool runs, until a reply asks for no tool."""
        await self._maybe_compact(turn)
        turn.number = self.conversation.start_turn()
        self._record(ConversationMessage("user", turn.parts, turn.number))
        progress.started = True
        steps = 0
        while True:
            reply = progress.reply = Reply()
            await self._call_model(turn, reply, steps)
            progress.finish_reason = reply.finish_reason
            turn.logprob = reply.logprob
            self._record(
                ConversationMessage(
                    "model",
                    reply.parts(),
                    turn.number,
                    status=_reply_status(reply.finish_reason),
                    usage=reply.usage,
                    model=self.model,
                    finish_reason=reply.finish_reason,
                )
            )
            progress.reply = None
            _check_finished(reply.finish_reason)
            if not reply.calls:
                return
            if steps >= self.config.max_tool_steps:
                raise ToolStepLimit(
                    f"the model asked for tools after {steps} steps; "
                    f"max_tool_steps={self.config.max_tool_steps}"
                )
            steps += 1
            await self._run_tools(turn, reply.calls)

    def _failure(self, exc: Exception) -> tuple[MessageStatus, TurnError]:
        """The status and typed error of a turn that raised `exc`."""
        if isinstance(exc, StoreError | ConversationInUse):
            if isinstance(exc, ConversationInUse):  # another kernel took it over
                self.lost_to = exc
            return "error", self.host.recorder.turn_failed(exc)
        if isinstance(exc, TurnError):
            return ("incomplete" if isinstance(exc, StreamBroken) else "error"), exc
        if isinstance(exc, UsageProblem):  # a setting found wrong only when the call is made
            return "error", BackendError(str(exc), status="INVALID_ARGUMENT")
        log.exception("turn of %s failed", self.name)  # a bug of ours must not kill the loop
        return "error", BackendError(f"internal error: {exc.__class__.__name__}: {exc}")

    def _close_failed(
        self, turn: Turn, progress: _TurnProgress, status: MessageStatus, error: TurnError
    ) -> None:
        error = _scrubbed(error)
        error.partial_text = "".join(turn.text_parts)
        error.agent = self.name
        if not progress.started:
            return
        try:
            self._close_turn_record(turn, progress.reply, status)
        except (StoreError, ConversationInUse) as exc:
            log.warning("the store failed while closing a turn of %s: %s", self.name, exc)

    def _close_turn_record(self, turn: Turn, reply: Reply | None, status: MessageStatus) -> None:
        """Keep what arrived, and answer any dangling tool call so the next request is valid."""
        if reply is not None and reply.produced:
            self._record(
                ConversationMessage(
                    "model",
                    reply.parts(),
                    turn.number,
                    status=status,
                    usage=reply.usage,
                    model=self.model,
                    finish_reason=reply.finish_reason,
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
        """The backend of its endpoint, looked up at the first live call (a replayed
        reply needs none)."""
        if self._backend is None:
            self._backend = await self.host.backend_for(self.config)
        return self._backend

    def _request(
        self, *, with_tools: bool = True, extra: ConversationMessage | None = None
    ) -> ModelRequest:
        system = self.config.system_instruction
        summary = self.conversation.summary
        if summary:
            note = f"Summary of the earlier conversation:\n{summary}"
            system = f"{system}\n\n{note}" if system else note
        # After a switch of provider, what another provider left in history is converted.
        messages, _ = sendable(self.conversation.context(), provider_of(self.model))
        return ModelRequest(
            model=self.model,
            messages=[*messages, extra] if extra else messages,
            system_instruction=system or None,
            config=self.config,
            with_tools=with_tools,
        )

    async def _call_model(
        self, turn: Turn, reply: Reply, index: int, request: ModelRequest | None = None
    ) -> None:
        """One model call through the backend seam (replay, retries, quota waits): the
        ledger gets a row per HTTP attempt; a failure is the turn's `TurnError`."""
        self._live_call = reply
        try:
            await self._caller.call(
                request or self._request(),
                reply,
                _CallFollower(self, turn, index),
                refresh=turn.refresh,
            )
        finally:
            self._live_call = None

    async def _run_tools(self, turn: Turn, calls: list[FunctionCallPart]) -> None:
        """Run the calls in order; the answers given so far are recorded even on cancel."""
        answers: list[FunctionResponsePart] = []
        try:
            await answer_calls(
                turn, calls, self.config, self.host.config.max_tool_result_chars, answers
            )
        finally:
            if answers:
                self._record(ConversationMessage("user", tuple(answers), turn.number))

    async def _maybe_compact(self, turn: Turn) -> None:
        """Summarise older turns once the context passed `compaction_threshold` tokens."""
        threshold = self.config.compaction_threshold
        context = self.conversation.context()
        if threshold is None or len(context) < 2:
            return
        last = next((e for e in reversed(self.conversation.ledger) if e.status == "ok"), None)
        if last is None or _context_tokens(last.usage, context) < threshold:
            return
        reply = Reply()
        request = self._request(
            with_tools=False,
            extra=ConversationMessage("user", (TextPart(SUMMARY_PROMPT),), turn.number),
        )
        silent = Turn(self.name, (), self.model)
        silent.number = self.conversation.turn_seq + 1
        try:
            await self._call_model(silent, reply, -1, request)
        except TurnError as exc:
            log.warning("compaction of %s skipped: %s", self.name, exc)
            return
        finally:
            turn.usage = turn.usage + silent.usage
        summary = "".join(silent.text_parts).strip()
        if summary:
            index = self.conversation.record_compaction(summary, self.conversation.turn_seq)
            if (conversation := self._stored()) is not None:
                self.host.recorder.message(conversation, self.conversation.messages[index])
                self.host.recorder.settings(conversation, self.config)


def _context_tokens(usage: Usage, context: list[ConversationMessage]) -> int:
    """The context's size in tokens: the last call's prompt and reply, or (a service
    that reports no usage) its characters over `CHARS_PER_TOKEN`."""
    if usage.prompt_tokens is not None and usage.candidates_tokens is not None:
        return usage.prompt_tokens + usage.candidates_tokens
    chars = sum(len(part.text) for m in context for part in m.parts if isinstance(part, TextPart))
    return chars // CHARS_PER_TOKEN


def _reply_status(finish_reason: str | None) -> MessageStatus:
    if finish_reason is None:
        return "incomplete"  # truncated
    return "error" if finish_reason in BLOCKED_FINISH_REASONS else "complete"


def _check_finished(finish_reason: str | None) -> None:
    """A reply cut short (no finish reason) or stopped by the service fails the turn."""
    if finish_reason is None:
        raise StreamBroken("the reply stream ended without a finish reason (truncated)")
    if finish_reason in BLOCKED_FINISH_REASONS:
        raise ReplyBlocked(
            f"the service stopped the reply (finish reason {finish_reason}): "
            "rephrase the prompt or change the safety settings",
            finish_reason=finish_reason,
        )
