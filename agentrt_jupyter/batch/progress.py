"""What a map run tells the world while it goes: `BatchProgress` snapshots, sent to listeners.

The batch layer shows nothing itself. A run calls its listeners on the runtime loop (at
most 10 times a second, and once more at the end); a view is just a listener. Which view
`progress=None/True` means (a widget in a notebook, a tqdm bar on a terminal) is decided
above this layer: the package root registers it with `set_progress_view`.

Light on purpose (no pandas): the package root imports it to register the view.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("agentrt_jupyter")

ENDED = ("done", "stopped", "cancelled")
"""The states a run ends in."""


@dataclass(frozen=True)
class ErrorSummary:
    """One kind of error in a run: how many rows, and the first one's row and message."""

    kind: str
    count: int
    row: Any
    message: str


@dataclass(frozen=True)
class BatchProgress:
    """A snapshot of a map run (the final one is `frame.attrs["agentrt"]`).

    `state` is starting, running, waiting (rate limited), cancelling, then done, stopped
    (budget or quota; `stop_reason` says which) or cancelled; in batch mode also
    submitting, and the job's own state in `job_state`. `cost_usd` is an estimate (see
    `prices`), None for a model the price table lacks. `rate` is rows answered per
    second over the last 30 s and `eta` the seconds left at that rate (None before any).
    """

    total: int
    ok: int
    failed: int
    cancelled: int
    skipped: int
    cached: int
    in_flight: int
    concurrency: int
    tokens_in: int
    tokens_out: int
    cost_usd: float | None
    elapsed: float
    rate: float
    eta: float | None
    state: str
    stop_reason: str | None
    errors: tuple[ErrorSummary, ...]
    rate_limited: int
    concurrency_decreases: int
    mode: str
    model: str
    run_key: str
    job: str | None = None
    job_state: str | None = None

    @property
    def finished(self) -> int:
        return self.ok + self.failed + self.cancelled + self.skipped + self.cached

    @property
    def done(self) -> bool:
        return self.state in ENDED

    @property
    def answered(self) -> int:
        """Rows that got an answer (ok, failed or from the cache): what a bar fills with.

        Cancelled and skipped rows have ended too, but nothing was done for them: counting
        them would show a full bar for a run cancelled half way."""
        return self.ok + self.failed + self.cached

    def count_parts(self) -> list[str]:
        """Rows answered of all, each outcome, tokens and cost: the start of every summary."""
        parts = [f"{self.answered:,}/{self.total:,} rows done", f"ok {self.ok:,}"]
        for name, count in (
            ("failed", self.failed),
            ("cached", self.cached),
            ("skipped", self.skipped),
            ("cancelled", self.cancelled),
        ):
            if count:
                parts.append(f"{name} {count:,}")
        parts.append(f"tokens {self.tokens_in:,} in / {self.tokens_out:,} out")
        if self.cost_usd is not None:
            parts.append(f"≈ ${self.cost_usd:.4f}")
        return parts

    def __str__(self) -> str:
        line = " · ".join(self.count_parts())
        return f"{line} ({self.stop_reason})" if self.stop_reason else line


Listener = Callable[[BatchProgress], None]


class Listeners:
    """A run's listeners: added from any thread, called on the runtime loop; one that
    raises is logged and dropped. After the final snapshot, a new one is called at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._final_sent = False

    def add(self, listener: Listener, snapshot: Callable[[], BatchProgress]) -> None:
        with self._lock:
            ended = self._final_sent
            if not ended:
                self._listeners.append(listener)
        if ended:
            listener(snapshot())

    def publish(self, snapshot: Callable[[], BatchProgress], *, final: bool = False) -> None:
        with self._lock:
            listeners = list(self._listeners)
            self._final_sent = self._final_sent or final
        if not listeners:
            return
        progress = snapshot()
        for listener in listeners:
            try:
                listener(progress)
            except Exception:
                log.exception("a map progress listener failed; it is dropped")
                with self._lock, contextlib.suppress(ValueError):
                    self._listeners.remove(listener)


class FollowedRun(Protocol):
    """What a view sees of a run (a `BatchRun`)."""

    @property
    def total(self) -> int: ...

    @property
    def progress(self) -> BatchProgress: ...

    def add_listener(self, listener: Listener) -> None: ...

    def cancel(self) -> None: ...


class ProgressView(Protocol):
    """Shows a run's progress (by adding itself as a listener); `always`: even where
    nothing would show by default (`progress=True`)."""

    def __call__(self, run: FollowedRun, *, always: bool) -> object: ...


_view: ProgressView | None = None


def set_progress_view(view: ProgressView | None) -> None:
    """The view `progress=None/True` shows (None: nothing); set by the package root."""
    global _view
    _view = view


def show(run: FollowedRun, progress: bool | Listener | None) -> None:
    """Follow `run` as `progress` asks: a callable is a listener, False shows nothing,
    None or True the registered view (see `set_progress_view`)."""
    if callable(progress):
        run.add_listener(progress)
    elif progress is not False and _view is not None:
        _view(run, always=progress is True)
