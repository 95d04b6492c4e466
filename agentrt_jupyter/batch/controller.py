"""A map run's rate controller: how many rows may be in flight, when the next may start,
and whether the budget lets it start at all.

Pure bookkeeping: no I/O, no asyncio, time read from the clock it is given, so a test
drives it with a fake clock. The run asks `admit(prompt, blocked=...)` before each row (a
`Start` has already reserved the row's estimate, so the next admission counts it) and
tells it what happened (`release` and `spend` when the row ends, `row_succeeded`,
`observe_quota`).

- Concurrency is additive-increase / multiplicative-decrease: it starts at
  `concurrency`, grows by 1/limit per row that succeeds without a 429 (about one per
  round of rows), and halves at each new rate-limit episode of the run's credential.
  It stays within 1 and `max_concurrency`.
- `rpm` spaces the starts 60/rpm seconds apart; `tpm` holds a row back while the tokens
  of the last minute, plus the estimates of the rows in flight, plus its own would pass it.
- `budget_tokens` / `budget_usd`: a row starts only if what was spent, plus the
  reservations of the rows in flight, plus its own stays within the budget. A row's
  reservation is its estimate, made when it is admitted (so rows that ended while it
  waited inform it): its prompt length times the most tokens per character seen so far,
  plus the most output tokens of one row so far (before any row has ended, 4 characters
  a token and as much output as input, or `max_output_tokens`). A budgeted run keeps no
  more rows in flight than have ended (the first runs alone), and a row starts beside
  others only if the budget would still have room for one more like it, so the last rows
  run one at a time. The guarantee: the run passes the budget by at most one row's
  excess over its estimate, unless rows running together exceed their estimates by more
  than one row's estimate in all. When the next row would pass the budget and nothing is
  in flight, the answer is `Stop`.
- A credential blocked (429) for longer than `quota_max_wait` is a `Stop` too; a shorter
  block is a `Wait` for it.
- Kernels sharing a key (the quota board): the run passes `minute_tokens`, the key's
  tokens of the last minute across kernels, in place of its own; the run's own rpm
  spacing stays (what a kernel does alone when the board is down), and a `Start` the
  board's key-wide rpm or slots then refuse is given back with `unreserve`.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .prices import ModelPrice

if TYPE_CHECKING:
    from .plan import MapPlan

CHARS_PER_TOKEN = 4.0
TPM_WINDOW = 60.0


@dataclass(frozen=True)
class Estimate:
    """What a row is expected to cost before it runs."""

    tokens_in: int
    tokens_out: int
    usd: float

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


@dataclass(frozen=True)
class Start:
    """The row may start now: its `estimate` is reserved (release it when the row ends)
    and the rpm pacing has counted it; `slot` names the key-wide slot it holds on the
    quota board, if any (free it when the row ends)."""

    estimate: Estimate
    slot: str | None = None


@dataclass(frozen=True)
class Wait:
    """Not yet: ask again after `seconds`, or when a row ends if None; `rate_limited` when
    the credential's 429 block is what holds the row back."""

    seconds: float | None
    rate_limited: bool = False


@dataclass(frozen=True)
class Stop:
    """The row (and every one after it) must not start: `reason` says why."""

    reason: str


Admission = Start | Wait | Stop


class RateController:
    """The concurrency, pacing and budget of one map run; see the module docstring."""

    def __init__(
        self,
        *,
        concurrency: int,
        max_concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        budget_tokens: int | None = None,
        budget_usd: float | None = None,
        price: ModelPrice | None = None,
        batch_price: bool = False,
        max_output_tokens: int | None = None,
        system_chars: int = 0,
        quota_max_wait: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.budget_tokens = budget_tokens
        self.budget_usd = budget_usd
        self.price = price
        self._batch_price = batch_price
        self._max_output_tokens = max_output_tokens
        self._system_chars = system_chars
        self.quota_max_wait = quota_max_wait
        self._clock = clock
        self.limit = float(concurrency)
        self.decreases = 0
        self.rate_limited = 0
        self.in_flight = 0
        self.ended = 0
        self.reserved_tokens = 0
        self.reserved_usd = 0.0
        self.tokens_in = 0
        self.tokens_out = 0
        self.usd = 0.0
        self._seen_rows = 0
        self._most_in_per_char = 0.0
        self._most_out = 0
        self._next_start = 0.0
        self._minute: collections.deque[tuple[float, int]] = collections.deque()
        self._minute_tokens = 0
        self._hits_seen = 0
        self._episode = 0.0

    @classmethod
    def for_plan(
        cls, plan: MapPlan, quota_max_wait: float, clock: Callable[[], float] = time.monotonic
    ) -> RateController:
        """The controller of a run of `plan`."""
        return cls(
            concurrency=plan.concurrency,
            max_concurrency=plan.max_concurrency,
            rpm=plan.rpm,
            tpm=plan.tpm,
            budget_tokens=plan.budget_tokens,
            budget_usd=plan.budget_usd,
            price=plan.price,
            batch_price=plan.mode == "batch",
            max_output_tokens=plan.config.max_output_tokens,
            system_chars=len(plan.config.system_instruction or ""),
            quota_max_wait=quota_max_wait,
            clock=clock,
        )

    @property
    def concurrency(self) -> int:
        """How many rows may be in flight now."""
        return int(self.limit)

    def estimate(self, prompt: str) -> Estimate:
        """What the row of `prompt` will probably cost, from the rows seen so far."""
        chars = len(prompt) + self._system_chars
        if self._seen_rows and self._most_in_per_char:
            tokens_in = chars * self._most_in_per_char
            tokens_out = float(self._most_out)
        else:
            tokens_in = chars / CHARS_PER_TOKEN
            tokens_out = float(self._max_output_tokens or tokens_in)
        estimate_in, estimate_out = math.ceil(tokens_in), math.ceil(tokens_out)
        return Estimate(estimate_in, estimate_out, self._cost(estimate_in, estimate_out))

    def over_budget(self, estimate: Estimate, *, spare: Estimate | None = None) -> str | None:
        """Why the row of `estimate` must not start (the budget), or None; with `spare`,
        the budget must also keep room for a row of that estimate after it."""
        tokens = estimate.tokens + (spare.tokens if spare is not None else 0)
        usd = estimate.usd + (spare.usd if spare is not None else 0.0)
        if self.budget_tokens is not None:
            spent = self.tokens_in + self.tokens_out
            if spent + self.reserved_tokens + tokens > self.budget_tokens:
                return (
                    f"stopped at budget_tokens={self.budget_tokens:,}: {spent:,} spent, the "
                    f"next row needs about {estimate.tokens:,}"
                )
        if self.budget_usd is not None and self.usd + self.reserved_usd + usd > self.budget_usd:
            return (
                f"stopped at budget_usd={self.budget_usd:g}: about ${self.usd:.4f} "
                f"spent, the next row needs about ${estimate.usd:.4f} (an estimate)"
            )
        return None

    def admit(
        self, prompt: str, *, blocked: float = 0.0, minute_tokens: int | None = None
    ) -> Admission:
        """May the row of `prompt` start, with the credential blocked `blocked` s more?
        `minute_tokens`: the key's tokens of the last minute across kernels, if shared."""
        estimate = self.estimate(prompt)
        if blocked > self.quota_max_wait:
            return Stop(
                f"stopped: the key is rate limited for {blocked:.0f} s more, past "
                f"quota_max_wait={self.quota_max_wait:g} s: run the same call again later"
            )
        over = self.over_budget(estimate)
        if over is not None:
            return Wait(None) if self.in_flight else Stop(over)
        if self.in_flight and (
            self.in_flight >= self.concurrency
            or self._budget_ramp()
            or self.over_budget(estimate, spare=estimate) is not None
        ):
            return Wait(None)
        if blocked > 0:
            return Wait(blocked, rate_limited=True)
        return self._paced(estimate, minute_tokens)

    def _budget_ramp(self) -> bool:
        """A budget to keep, and as many rows in flight as have ended to size them by."""
        budgeted = self.budget_tokens is not None or self.budget_usd is not None
        return budgeted and self.in_flight >= self.ended

    def _paced(self, estimate: Estimate, minute_tokens: int | None) -> Start | Wait:
        """The rpm and tpm ceilings: start now (reserving, counting the start) or wait."""
        now = self._clock()
        tokens = (
            self._tokens_wait(estimate, now)
            if minute_tokens is None
            else self._key_tokens_wait(estimate, minute_tokens)
        )
        pace = self._next_start - now
        if pace <= 0 and tokens == 0:
            if self.rpm is not None:
                self._next_start = max(now, self._next_start) + 60 / self.rpm
            self.reserve(estimate)
            return Start(estimate)
        return Wait(None if tokens is None else max(pace, tokens))

    def _tokens_wait(self, estimate: Estimate, now: float) -> float | None:
        """Seconds until `tpm` lets the row start (0: now; None: when a row ends)."""
        if self.tpm is None:
            return 0.0
        while self._minute and self._minute[0][0] <= now - TPM_WINDOW:
            self._minute_tokens -= self._minute.popleft()[1]
        used = self._minute_tokens + self.reserved_tokens
        if used + estimate.tokens <= self.tpm or (not self._minute and not self.in_flight):
            return 0.0
        return self._minute[0][0] + TPM_WINDOW - now if self._minute else None

    def _key_tokens_wait(self, estimate: Estimate, minute_tokens: int) -> float:
        """`tpm` for the whole key: 0 if the row fits the last minute's tokens across
        kernels, else a second (the board keeps no per-row times to say when it will)."""
        if self.tpm is None or minute_tokens + self.reserved_tokens + estimate.tokens <= self.tpm:
            return 0.0
        return 0.0 if not minute_tokens and not self.in_flight else 1.0

    def reserve(self, estimate: Estimate) -> None:
        """A request of `estimate` is in flight: its estimate counts against the limits."""
        self.in_flight += 1
        self.reserved_tokens += estimate.tokens
        self.reserved_usd += estimate.usd

    def release(self, estimate: Estimate) -> None:
        """The request of `estimate` ended (what it cost goes to `spend`)."""
        self.ended += 1
        self.in_flight -= 1
        self.reserved_tokens -= estimate.tokens
        self.reserved_usd -= estimate.usd

    def unreserve(self, estimate: Estimate) -> None:
        """A `Start` that did not start after all (the key's shared ceilings said wait)."""
        self.in_flight -= 1
        self.reserved_tokens -= estimate.tokens
        self.reserved_usd -= estimate.usd

    def release_all(self) -> None:
        """Nothing is in flight any more."""
        self.in_flight, self.reserved_tokens, self.reserved_usd = 0, 0, 0.0

    def spend(self, tokens_in: int, tokens_out: int) -> None:
        """Count tokens a row used (its cost, and the tpm window)."""
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.usd += self._cost(tokens_in, tokens_out)
        if self.tpm is not None:
            self._minute.append((self._clock(), tokens_in + tokens_out))
            self._minute_tokens += tokens_in + tokens_out

    def row_succeeded(self, prompt: str, tokens_in: int, tokens_out: int, *, limited: bool) -> None:
        """Learn the row's size for the estimates; grow the concurrency unless it met a 429."""
        self._seen_rows += 1
        chars = len(prompt) + self._system_chars
        if chars:
            self._most_in_per_char = max(self._most_in_per_char, tokens_in / chars)
        self._most_out = max(self._most_out, tokens_out)
        if not limited:
            self.limit = min(float(self.max_concurrency), self.limit + 1 / self.limit)

    def quota_baseline(self, total_hits: int, episode: float) -> None:
        """The credential's 429s before the run: not the run's to count."""
        self._hits_seen, self._episode = total_hits, episode

    def observe_quota(self, total_hits: int, episode: float) -> bool:
        """Count the credential's new 429s; halve the concurrency once per new episode
        (`episode` is when it began). True if the concurrency was halved."""
        if total_hits <= self._hits_seen:
            return False
        self.rate_limited += total_hits - self._hits_seen
        self._hits_seen = total_hits
        if episode == self._episode:
            return False
        self._episode = episode
        self.limit = max(1.0, self.limit / 2)
        self.decreases += 1
        return True

    def _cost(self, tokens_in: int, tokens_out: int) -> float:
        if self.price is None:
            return 0.0
        return self.price.cost(tokens_in, tokens_out, batch=self._batch_price)
