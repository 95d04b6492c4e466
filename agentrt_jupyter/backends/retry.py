"""Retries at the boundary: the quota gate, 429 waits, 5xx and dropped-connection retries.

`RetryingCaller` wraps a `Backend` and makes one model call of many HTTP attempts, each
streamed by `pump` and each reported as one ledger row (`CallListener.on_attempt`). The
SDK's own retries are off, so every attempt is visible here and its pauses are plain
`asyncio.sleep`s: a cancel stops them at once. The rules are the README's ("Errors"):

- The backend gets the model name without its provider prefix; the row keeps the provider.
- Only a failure before anything streamed is retried: a retry never repeats text.
- A 408/5xx or a failed connection is retried up to `http_retry_attempts` attempts, with
  exponential backoff and jitter.
- A per-minute 429 blocks the credential for every agent on it (`QuotaRegistry`); a
  per-day or limit-0 429 fails at once, and so does a wait past `quota_max_wait`; so
  does a billing refusal (no credit: OpenAI's `insufficient_quota`, Anthropic's credit
  balance), with advice, its ledger row an error rather than rate-limited.
- A turn gives up after `quota_max_retries` waits that did not help: its own 429s, and
  waits during which another agent's *retry* was limited again while no call on the key
  got through. Waiting behind others' first 429s costs nothing; a request's first 429
  joins the current episode (`QuotaRegistry.record_hit(retry=False)`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from ..config import RuntimeConfig, split_model
from ..conversation import CallStatus, utcnow
from ..errors import BackendError, QuotaExceeded, TurnError
from ..quota import QuotaRegistry
from .base import Attempt, Backend, CallListener, ModelRequest, QuotaHit, Reply
from .pump import StreamPacer, pump

RETRIED_STATUS_CODES = frozenset({408, 500, 502, 503, 504, 529})
"""HTTP codes retried here (the SDK's own retries are off, so each attempt is seen);
529 is Anthropic's "overloaded", its 503."""
MAX_RETRY_PAUSE = 8.0
"""The longest backoff between two attempts after a 408/5xx or a failed connection."""


@dataclass(frozen=True)
class RetryPolicy:
    """The runtime's limits for one call's retries and waits."""

    http_retry_attempts: int = 3
    quota_max_retries: int = 3
    quota_max_wait: float = 120.0
    idle_chunk_timeout: float = 120.0

    @classmethod
    def of(cls, config: RuntimeConfig) -> RetryPolicy:
        return cls(
            http_retry_attempts=config.http_retry_attempts,
            quota_max_retries=config.quota_max_retries,
            quota_max_wait=config.quota_max_wait,
            idle_chunk_timeout=config.idle_chunk_timeout,
        )


class RetryingCaller:
    """One model call over a backend: attempts, waits and a ledger row per attempt.

    `backend` gives the backend when the first call needs it (a call answered from the
    reply cache needs none: no client is made and no local server started for it)."""

    def __init__(
        self,
        backend: Callable[[], Awaitable[Backend]],
        quota: QuotaRegistry,
        policy: RetryPolicy,
        pacer: StreamPacer,
    ) -> None:
        self._backend = backend
        self._quota = quota
        self._policy = policy
        self._pacer = pacer

    async def call(
        self,
        request: ModelRequest,
        reply: Reply,
        listener: CallListener,
        *,
        refresh: bool = False,
    ) -> None:
        backend = await self._backend()
        gate = _QuotaGate(self._quota, backend.credential, self._policy)
        failures = 0
        while True:
            waited = await gate.wait(listener)
            pause = await self._attempt(backend, request, reply, listener, gate, waited, failures)
            if pause is None:
                return
            reply.reset()
            if pause.retried:
                failures += 1
                listener.on_waiting(pause.seconds, f"retrying after: {pause.reason}")
                await asyncio.sleep(pause.seconds)

    async def _attempt(
        self,
        backend: Backend,
        request: ModelRequest,
        reply: Reply,
        listener: CallListener,
        gate: _QuotaGate,
        waited: float,
        failures: int,
    ) -> _Pause | None:
        """One HTTP attempt and its ledger row; what to do before the next (None: done)."""
        sent, wall = time.monotonic(), utcnow()
        status: CallStatus = "error"
        error_text: str | None = None
        try:
            await pump(
                backend,
                _as_sent(request),
                reply,
                listener,
                idle_timeout=self._policy.idle_chunk_timeout,
                pacer=self._pacer,
            )
            self._quota.record_success(backend.credential)
            status, error_text = _ended(reply)
            return None
        except QuotaHit as hit:
            billing = hit.info.scope == "billing"
            status, error_text = ("error" if billing else "rate-limited"), hit.info.message
            gate.after_hit(hit, reply, sent)
            return _Pause(0.0, error_text, retried=False)
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except TurnError as exc:
            error_text = str(exc)
            seconds = _retry_pause(exc, failures + 1, self._policy, reply)
            status = "retried"
            return _Pause(seconds, error_text, retried=True)
        finally:
            listener.on_attempt(
                Attempt(
                    model=request.model,
                    started=wall,
                    usage=reply.usage,
                    time_to_first_chunk=None
                    if reply.first_chunk_at is None
                    else reply.first_chunk_at - sent,
                    duration=time.monotonic() - sent,
                    finish_reason=reply.finish_reason,
                    status=status,
                    retry_wait=waited,
                    error=error_text,
                )
            )


@dataclass(frozen=True, slots=True)
class _Pause:
    """Before the next attempt: a backoff to sleep (`retried`), or the quota gate's wait."""

    seconds: float
    reason: str
    retried: bool


def _as_sent(request: ModelRequest) -> ModelRequest:
    """The request with the model name its provider knows ("openai:gpt-4.1-mini" is
    sent as "gpt-4.1-mini"); the ledger row keeps the provider."""
    provider, model = split_model(request.model)
    return request if provider == "gemini" else replace(request, model=model)


def _ended(reply: Reply) -> tuple[CallStatus, str | None]:
    """The status of a stream that ended: ok, or truncated (no finish reason).

    A truncated reply is returned (the turn fails as truncated and keeps it), unless
    nothing came at all: that is not a Gemini-format reply."""
    if reply.finish_reason is not None:
        return "ok", None
    if not reply.produced:
        raise BackendError(
            "the service ended the reply with no content and no finish reason "
            "(is the endpoint a Gemini API?)",
            status="BAD_RESPONSE",
        )
    return "error", "the stream ended without a finish reason"


def retriable(exc: TurnError) -> bool:
    """A failure before any reply that another attempt may not see (5xx, 408, no connection)."""
    if not isinstance(exc, BackendError):
        return False
    return exc.code in RETRIED_STATUS_CODES or (exc.code is None and exc.status == "UNAVAILABLE")


def _retry_pause(exc: TurnError, attempt: int, policy: RetryPolicy, reply: Reply) -> float:
    """The backoff before attempt `attempt + 1`, or re-raise `exc` if it is not retried."""
    if reply.produced or attempt >= policy.http_retry_attempts or not retriable(exc):
        raise exc
    backoff: float = min(MAX_RETRY_PAUSE, 0.5 * 2 ** (attempt - 1))
    return backoff * (1 + random.uniform(0, 0.25))


class _QuotaGate:
    """One call's passage through its credential's rate limit, and what its waits count.

    Waits that did not help count against `quota_max_retries`: each of the call's own
    429s, and each wait for the key during which another agent's retry was limited again
    and nobody got through (the key stays blocked). The wait right after our own 429 is
    that 429's, not counted twice.
    """

    def __init__(self, registry: QuotaRegistry, credential: str, policy: RetryPolicy) -> None:
        self._registry = registry
        self._credential = credential
        self._policy = policy
        self.counted = 0
        """Waits that did not help, so far."""
        self._own_hits = 0
        self._after_own_hit = False
        start = registry.state(credential)
        self._seen_successes, self._seen_retry_hits = start.successes, start.retry_hits

    async def wait(self, listener: CallListener) -> float:
        """Wait while the credential is blocked; the seconds waited."""
        waited = 0.0
        while (blocked := self._registry.state(self._credential)).blocked:
            stuck = (
                blocked.successes == self._seen_successes
                and blocked.retry_hits > self._seen_retry_hits
            )
            if stuck and not self._after_own_hit:
                self._count_stuck_wait(blocked.seconds_left, blocked.last_quota_id)
            self._after_own_hit = False
            self._seen_successes, self._seen_retry_hits = blocked.successes, blocked.retry_hits
            if blocked.seconds_left > self._policy.quota_max_wait:
                raise _past_max_wait(
                    blocked.seconds_left, self._policy.quota_max_wait, blocked.last_quota_id
                )
            reason = f"rate limited ({blocked.last_quota_id or 'shared credential'})"
            listener.on_waiting(blocked.seconds_left, reason)
            waited += await self._registry.wait_once(self._credential)
        self._after_own_hit = False
        return waited

    def _count_stuck_wait(self, seconds_left: float, quota_id: str | None) -> None:
        if self.counted >= self._policy.quota_max_retries:
            raise QuotaExceeded(
                _quota_advice("minute", self.counted, None),
                retry_after=seconds_left,
                quota_id=quota_id,
                scope="minute",
            )
        self.counted += 1

    def after_hit(self, hit: QuotaHit, reply: Reply, sent: float) -> None:
        """Record our own 429 (every agent on the key now waits), or raise `QuotaExceeded`
        when waiting won't do: mid-reply, per-day, limit 0, retries used up, too long."""
        info = hit.info
        scope = info.scope if info.scope != "unknown" else "minute"
        if reply.produced:
            raise QuotaExceeded(
                "rate limited in the middle of the reply; the partial reply is kept: run the "
                "turn again",
                retry_after=info.retry_after,
                quota_id=info.quota_id,
                scope=scope,
            )
        if (
            info.scope not in ("minute", "unknown")
            or self.counted >= self._policy.quota_max_retries
        ):
            raise QuotaExceeded(
                _quota_advice(info.scope, self.counted, info.retry_after, info.message),
                retry_after=info.retry_after,
                quota_id=info.quota_id,
                scope=scope,
            )
        wait = self._registry.record_hit(
            self._credential,
            info.retry_after,
            scope=info.scope,
            quota_id=info.quota_id,
            sent_at=sent,
            retry=self._own_hits > 0,
        )
        if wait > self._policy.quota_max_wait:
            raise _past_max_wait(wait, self._policy.quota_max_wait, info.quota_id)
        self.counted += 1
        self._own_hits += 1
        self._after_own_hit = True


def _past_max_wait(wait: float, max_wait: float, quota_id: str | None) -> QuotaExceeded:
    """The key would be rate limited longer than the turn may wait (`quota_max_wait`)."""
    return QuotaExceeded(
        f"this key is rate limited for {wait:.0f} s more, past quota_max_wait={max_wait:g} s: "
        "try again later or raise quota_max_wait",
        retry_after=wait,
        quota_id=quota_id,
        scope="minute",
    )


def _quota_advice(
    scope: str, retries: int, retry_after: float | None, said: str | None = None
) -> str:
    if scope == "billing":
        return (
            f"the provider refused the request for billing ({said or 'no credit'}): add credit "
            "or check the billing settings at the provider; retrying will not help"
        )
    if scope == "day":
        return (
            "daily quota used up for this key and model: try tomorrow, another model, or a paid key"
        )
    if scope == "zero":
        return "this model has no quota on this key (limit 0): pick another model or enable billing"
    after = f"; the service asks to wait {retry_after:g} s" if retry_after else ""
    return f"rate limited and still limited after {retries} retries{after}"
