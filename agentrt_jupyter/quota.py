"""Rate limits per credential: a 429 makes every agent on that key wait, or fail at once.

A credential is known by a fingerprint (a short hash), never by the key itself. Per-minute
limits wait until `max(retryDelay, backoff)` plus jitter; per-day limits and limit 0 fail
with `QuotaExceeded` because waiting here will not fix them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

QuotaScope = Literal["minute", "day", "zero", "unknown"]
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)s\s*$")


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


def parse_quota_error(details: Any, message: str = "") -> QuotaInfo:
    """Read RetryInfo and QuotaFailure from a Gemini 429 error body."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    retry_after: float | None = None
    quota_id: str | None = None
    limit_zero = "limit: 0" in (message or str(error.get("message", "")))
    for detail in error.get("details", []) if isinstance(error, dict) else []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            retry_after = float(match.group(1)) if match else None
        elif kind.endswith("QuotaFailure"):
            for violation in detail.get("violations", []):
                quota_id = quota_id or violation.get("quotaId")
                if str(violation.get("quotaValue", "")) == "0":
                    limit_zero = True
    scope: QuotaScope = "unknown"
    if limit_zero:
        scope = "zero"
    elif quota_id and "PerDay" in quota_id:
        scope = "day"
    elif (quota_id and "PerMinute" in quota_id) or retry_after is not None:
        scope = "minute"
    return QuotaInfo(scope, retry_after, quota_id, str(error.get("message", message)))


@dataclass(frozen=True)
class QuotaState:
    """A snapshot of one credential's rate-limit state."""

    fingerprint: str
    blocked_until: float = 0.0
    consecutive_hits: int = 0
    total_hits: int = 0
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
    ) -> float:
        """Block the credential; returns how long every agent on it now waits."""
        state = self.state(key)
        hits = state.consecutive_hits + 1
        backoff = self._base_backoff * 2 ** (hits - 1) if retry_after is None else 0.0
        wait = max(retry_after or 0.0, backoff) * (1 + random.uniform(0, self._jitter))
        until = max(state.blocked_until, time.monotonic() + wait)
        self._states[key] = replace(
            state,
            blocked_until=until,
            consecutive_hits=hits,
            total_hits=state.total_hits + 1,
            last_scope=scope,
            last_quota_id=quota_id,
        )
        return until - time.monotonic()

    def record_success(self, key: str) -> None:
        state = self._states.get(key)
        if state is not None and state.consecutive_hits:
            self._states[key] = replace(state, consecutive_hits=0, blocked_until=0.0)

    async def wait(self, key: str) -> float:
        """Sleep until the credential is unblocked; returns the seconds waited."""
        waited = 0.0
        while (left := self.state(key).seconds_left) > 0:
            await asyncio.sleep(left)
            waited += left
        return waited
