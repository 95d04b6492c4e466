"""What every row of a map run came to, and the result frame made of it.

Result frame, index = the input's index:

    reply string (or one typed column per schema field, see `schema`),
    status category[ok, error, cancelled, skipped, cached], error string (the reason
    for error / cancelled / skipped), tokens_in Int64 (prompt tokens), tokens_out Int64
    (reply and thinking tokens), latency float64 (seconds from the row's start to its
    end, waits included), attempts int64 (HTTP requests this run made for the row)

With `logprobs=True`, a `logprob` float64 column follows: the mean token log probability
of the row's reply (NaN where the service gave none: a cached row, a batch, Anthropic).

A cached row keeps the tokens and latency it had when it was made, with 0 attempts.
`frame.attrs["agentrt"]` is the run's final `BatchProgress`.

Kept column-wise (compact whatever the row count), with the counts by status, the errors
by kind (the first row of each as the example) and the rate of rows answered.
"""

from __future__ import annotations

import collections
import math
import threading
from typing import Any

import numpy as np
import pandas as pd

from ..errors import BackendError, QuotaExceeded
from .progress import ErrorSummary
from .schema import ResultSchema

STATUSES = ("ok", "error", "cancelled", "skipped", "cached")
STATUS_DTYPE = pd.CategoricalDtype(list(STATUSES))
OK, ERROR, CANCELLED, SKIPPED, CACHED = range(5)
PENDING = -1
RATE_WINDOW = 30.0
"""Seconds of finished rows the rate (and so the ETA) is measured over."""


class RowOutcomes:
    """Every row's outcome; written on the runtime loop, counts and errors read anywhere."""

    def __init__(self, schema: ResultSchema | None, total: int, *, logprobs: bool = False) -> None:
        self.schema = schema
        self.logprob = np.full(total, np.nan) if logprobs else None
        self.status = np.full(total, PENDING, dtype=np.int8)
        self.error: list[str | None] = [None] * total
        self.tokens_in = np.zeros(total, dtype=np.int64)
        self.tokens_out = np.zeros(total, dtype=np.int64)
        self.counted = np.zeros(total, dtype=bool)
        self.latency = np.full(total, np.nan)
        self.attempts = np.zeros(total, dtype=np.int64)
        self.text: list[str | None] = [None] * total if schema is None else []
        self.values: dict[str, list[Any]] = (
            {f.name: [None] * total for f in schema.fields} if schema else {}
        )
        self.counts = [0] * len(STATUSES)
        self._errors: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._answered: collections.deque[float] = collections.deque()

    def set_reply(
        self,
        position: int,
        text: str,
        values: dict[str, Any] | None,
        logprob: float | None = None,
    ) -> None:
        if self.logprob is not None and logprob is not None:
            self.logprob[position] = logprob
        if values is None:
            self.text[position] = text
            return
        for name, value in values.items():
            self.values[name][position] = value

    def finish(
        self,
        position: int,
        status: int,
        now: float,
        *,
        error: str | None = None,
        kind: str | None = None,
        tokens: tuple[int, int] | None = None,
        latency: float = math.nan,
        attempts: int = 0,
    ) -> None:
        """Row `position` ended with `status` at `now` (monotonic seconds)."""
        self.status[position] = status
        self.error[position] = error
        if tokens is not None:
            self.tokens_in[position], self.tokens_out[position] = tokens
            self.counted[position] = True
        self.latency[position] = latency
        self.attempts[position] = attempts
        self.counts[status] += 1
        if status in (OK, ERROR, CANCELLED) and attempts:
            self._answered.append(now)
            while self._answered[0] < now - RATE_WINDOW:
                self._answered.popleft()
        if status == ERROR and error is not None:
            self._count_error(position, kind or "error", error)

    def _count_error(self, position: int, kind: str, error: str) -> None:
        with self._lock:
            entry = self._errors.get(kind)
            if entry is None:
                self._errors[kind] = [1, position, error]
            else:  # the example is the first row in the frame, whatever finished first
                entry[0] += 1
                if position < entry[1]:
                    entry[1:] = [position, error]

    def pending(self) -> list[int]:
        """The rows without an outcome yet."""
        return [int(position) for position in np.flatnonzero(self.status == PENDING)]

    def errors(self, index: pd.Index) -> tuple[ErrorSummary, ...]:
        """The errors by kind, each with its first row's label in `index`."""
        with self._lock:
            return tuple(
                ErrorSummary(kind, count, index[position], message)
                for kind, (count, position, message) in self._errors.items()
            )

    def rate(self, now: float, elapsed: float) -> float:
        """Rows answered per second over the last `RATE_WINDOW` s (or `elapsed`, if less)."""
        answered = self._answered
        while answered and answered[0] < now - RATE_WINDOW:
            try:
                answered.popleft()
            except IndexError:  # the loop thread emptied it meanwhile
                break
        window = min(RATE_WINDOW, elapsed)
        return len(answered) / window if window > 0 else 0.0

    def frame(self, index: pd.Index) -> pd.DataFrame:
        """The result frame (rows still pending show as cancelled)."""
        data: dict[str, Any] = {}
        if self.schema is None:
            data["reply"] = pd.array(self.text, dtype="string")
        else:
            for field in self.schema.fields:
                data[field.name] = self.schema.column(field, self.values[field.name])
        codes = np.where(self.status == PENDING, CANCELLED, self.status)
        data["status"] = pd.Categorical.from_codes(codes, dtype=STATUS_DTYPE)
        data["error"] = pd.array(self.error, dtype="string")
        data["tokens_in"] = pd.arrays.IntegerArray(self.tokens_in.copy(), ~self.counted)
        data["tokens_out"] = pd.arrays.IntegerArray(self.tokens_out.copy(), ~self.counted)
        data["latency"] = self.latency.copy()
        data["attempts"] = self.attempts.copy()
        if self.logprob is not None:
            data["logprob"] = self.logprob.copy()
        return pd.DataFrame(data, index=index.copy())


def error_kind(error: BaseException) -> str:
    """How errors are grouped in the summary: type, and the code or scope that matters."""
    if isinstance(error, QuotaExceeded):
        return f"QuotaExceeded ({error.scope})"
    if isinstance(error, BackendError) and error.code is not None:
        return f"BackendError {error.code}"
    return type(error).__name__
