"""Rate limits per credential: a 429 makes every agent on that key wait, or fail at once.

A credential is known by a fingerprint (a short hash), never by the key itself. Per-minute
limits wait for the 429's `retryDelay`, or without one for a backoff that doubles per
*episode*, not per hit:
every request that was already in flight when the credential got blocked belongs to the same
episode, so ten agents hitting one 429 each wait once, not 2**10 times as long. Each waiter
adds its own jitter so they do not all retry in the same millisecond. Per-day limits and
limit 0 fail with `QuotaExceeded` because waiting here will not fix them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

QuotaScope = Literal["minute", "day", "zero", "billing", "unknown"]
"""`billing`: the provider refused for credit or billing (no wait helps; fails at once)."""
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)s\s*$")
MAX_BACKOFF = 300.0
"""The backoff without RetryInfo never grows past this (the cap the caller sets may be lower)."""


def fingerprint(api_key: str | None, base_url: str | None) -> str:
    """A stable, non-reversible name for a credential (key + endpoint)."""
    digest = hashlib.sha256(f"{api_key or ''}\0{base_url or ''}".encode()).hexdigest()
    return f"cred-{digest[:12]}"


@dataclass(frozen=True)
class QuotaInfo:
    """What a 429 said: how long to wait and which quota was hit."""

    scope: QuotaScope
    retry_after: float | None
    quota_id: str | None
    message: str


def _retry_delay(value: object) -> float | None:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    seconds = float(match.group(1))
    return seconds if seconds == seconds and seconds < 1e9 else None


def parse_quota_error(details: Any, message: str = "") -> QuotaInfo:
    """Read RetryInfo and QuotaFailure from a Gemini 429 error body; never raises.

    Whatever shape the body has (a list, a string, `violations` that are not a list), the
    worst outcome is a `QuotaInfo` with scope "unknown" and no delay.
    """
    error = details.get("error", details) if isinstance(details, dict) else {}
    if not isinstance(error, dict):
        error = {}
    text = message if isinstance(message, str) and message else str(error.get("message", ""))
    retry_after: float | None = None
    quota_id: str | None = None
    limit_zero = "limit: 0" in text
    entries = error.get("details")
    for detail in entries if isinstance(entries, list) else []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("RetryInfo"):
            retry_after = _retry_delay(detail.get("retryDelay"))
        elif kind.endswith("QuotaFailure"):
            violations = detail.get("violations")
            for violation in violations if isinstance(violations, list) else []:
                if not isinstance(violation, dict):
                    continue
                found = violation.get("quotaId")
                if quota_id is None and isinstance(found, str):
                    quota_id = found
                if str(violation.get("quotaValue", "")) == "0":
                    limit_zero = True
    scope: QuotaScope = "unknown"
    if limit_zero:
        scope = "zero"
    elif quota_id and "PerDay" in quota_id:
        scope = "day"
    elif (quota_id and "PerMinute" in quota_id) or retry_after is not None:
        scope = "minute"
    return QuotaInfo(scope, retry_after, quota_id, text[:500])


@dataclass(frozen=True)
class QuotaState:
    """A snapshot of one credential's rate-limit state.

    `episodes` counts blocks in a row without a success in between (it sets the backoff);
    `total_hits` counts every 429 seen, `retry_hits` those on a request retried after its
    own 429 (waiting did not help it), and `successes` every call that got through.
    """

    fingerprint: str
    blocked_until: float = 0.0
    blocked_at: float = 0.0
    episodes: int = 0
    total_hits: int = 0
    retry_hits: int = 0
    successes: int = 0
    last_scope: QuotaScope | None = None
    last_quota_id: str | None = None

    @property
    def seconds_left(self) -> float:
        return max(0.0, self.blocked_until - time.monotonic())

    @property
    def blocked(self) -> bool:
        return self.seconds_left > 0


class QuotaRegistry:
    """One `QuotaState` per credential; owned by the runtime loop."""

    def __init__(self, *, base_backoff: float = 1.0, jitter: float = 0.1) -> None:
        self._states: dict[str, QuotaState] = {}
        self._base_backoff = base_backoff
        self._jitter = jitter

    def state(self, key: str) -> QuotaState:
        return self._states.get(key) or QuotaState(key)

    def states(self) -> list[QuotaState]:
        return list(self._states.values())

    def record_hit(
        self,
        key: str,
        retry_after: float | None,
        *,
        scope: QuotaScope = "minute",
        quota_id: str | None = None,
        sent_at: float | None = None,
        retry: bool = False,
    ) -> float:
        """Block the credential; returns how long every agent on it now waits.

        A hit joins the current episode (the block is extended to cover its `retry_after`,
        the backoff does not grow) if its request was in flight when the block began, or if
        it is a request's first 429: a herd of agents meeting a busy key one after another is
        one episode. Only a `retry` (a request sent again after its own 429) that is limited
        again starts a new one. `sent_at` is the request's `time.monotonic()`; None means
        "just now".
        """
        now = time.monotonic()
        state = self.state(key)
        sent = now if sent_at is None else sent_at
        same_episode = state.episodes > 0 and (sent < state.blocked_until or not retry)
        episodes = state.episodes if same_episode else state.episodes + 1
        if retry_after is not None:
            wait = retry_after  # the service said how long; its word beats our guess
        else:
            wait = min(MAX_BACKOFF, self._base_backoff * 2 ** min(episodes - 1, 30))
        left = max(state.blocked_until - now, wait)
        until = now + left
        self._states[key] = replace(
            state,
            blocked_until=until,
            blocked_at=state.blocked_at if same_episode else now,
            episodes=episodes,
            total_hits=state.total_hits + 1,
            retry_hits=state.retry_hits + retry,
            last_scope=scope,
            last_quota_id=quota_id,
        )
        return left

    def record_success(self, key: str) -> None:
        state = self._states.get(key)
        if state is not None:
            self._states[key] = replace(
                state, episodes=0, blocked_until=0.0, successes=state.successes + 1
            )

    def jittered_wait(self, key: str) -> float:
        """How long one waiter sleeps now: the shared block plus its own jitter."""
        left = self.state(key).seconds_left
        return left * (1 + random.uniform(0, self._jitter)) if left > 0 else 0.0

    async def wait_once(self, key: str) -> float:
        """Sleep until the block as it is now ends (plus jitter); the seconds slept.

        Once: the caller looks again, since another 429 may have extended the block."""
        left = self.jittered_wait(key)
        if left > 0:
            await asyncio.sleep(left)
        return left

    async def wait(self, key: str) -> float:
        """Sleep until the credential is unblocked; returns the seconds waited."""
        waited = 0.0
        while self.state(key).blocked:
            waited += await self.wait_once(key)
        return waited
