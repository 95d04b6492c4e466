"""The map progress widget shown truthfully: what the bar and summary count, and the
Cancel button's state at the run's end, whatever order the click and the end come in.

The view is fed `BatchProgress` snapshots as the run's ticker feeds it; the run is a
small recorder of what the view asks of it (`FollowedRun`: total, progress, listeners,
cancel).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable

from agentrt_jupyter.batch.progress import BatchProgress
from agentrt_jupyter.notebook.batchview import BatchProgressView, summary_line

Listener = Callable[[BatchProgress], None]


def snapshot(**changes: object) -> BatchProgress:
    base = BatchProgress(
        total=50,
        ok=0,
        failed=0,
        cancelled=0,
        skipped=0,
        cached=0,
        in_flight=0,
        concurrency=4,
        tokens_in=0,
        tokens_out=0,
        cost_usd=None,
        elapsed=1.0,
        rate=0.0,
        eta=None,
        state="running",
        stop_reason=None,
        errors=(),
        rate_limited=0,
        concurrency_decreases=0,
        mode="live",
        model="m",
        run_key="k",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class FollowedRun:
    """A run as the view follows it; `cancel` may deliver the run's end at once, as a
    run whose last rows were already settled does (its ticker publishes the end)."""

    def __init__(self, progress: BatchProgress, end_on_cancel: BatchProgress | None = None):
        self.total = progress.total
        self.progress = progress
        self.listeners: list[Listener] = []
        self.cancels = 0
        self._end_on_cancel = end_on_cancel

    def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def cancel(self) -> None:
        self.cancels += 1
        if self._end_on_cancel is not None:
            self.publish(self._end_on_cancel)

    def publish(self, progress: BatchProgress) -> None:
        self.progress = progress
        for listener in self.listeners:
            listener(progress)


def test_a_cancelled_run_does_not_fill_the_bar() -> None:
    run = FollowedRun(snapshot(ok=10, in_flight=4))
    view = BatchProgressView(run)
    run.publish(snapshot(ok=18, failed=2, cancelled=30, state="cancelled"))
    assert view.bar.value == 20 and view.bar.max == 50
    line = html.unescape(view.summary.value)
    assert line.startswith("20/50 rows done") and "cancelled 30" in line and "failed 2" in line
    assert "50/50" not in line
    view.close()


def test_the_button_ends_on_the_runs_state_when_the_end_comes_during_the_click() -> None:
    ended = snapshot(ok=12, cancelled=38, state="cancelled")
    run = FollowedRun(snapshot(ok=12, in_flight=4), end_on_cancel=ended)
    view = BatchProgressView(run)
    view.cancel_button.click()
    assert run.cancels == 1
    assert view.cancel_button.description == "Cancelled" and view.cancel_button.disabled
    view.close()


def test_a_click_after_the_run_ended_leaves_the_final_state() -> None:
    run = FollowedRun(snapshot(ok=50, state="done"))
    view = BatchProgressView(run)
    view.cancel_button.click()
    assert view.cancel_button.description == "Done" and run.cancels == 0
    view.close()


def test_more_in_flight_than_the_limit_says_the_limit_was_lowered() -> None:
    assert "4 in flight (concurrency 4)" in summary_line(snapshot(in_flight=4))
    line = summary_line(snapshot(in_flight=5, concurrency=4, concurrency_decreases=1))
    assert "5 in flight (concurrency lowered to 4)" in line
