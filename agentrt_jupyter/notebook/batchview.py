"""How a map run shows its progress: a widget in a notebook, a tqdm bar on a terminal.

Both are listeners of the run (the package root registers `show_progress` as the batch
layer's progress view, so a map shows it without the batch layer importing this one):
the run's own ticker on the runtime loop calls them at
most 10 times a second (one writer, as every widget here has) and once at the end. They
show rows done / failed / cached, tokens, the cost estimate, the current concurrency, the
rate and the ETA, and summarise errors by kind with the first example of each, never a
line per row. The widget's Cancel button only posts the cancel to the runtime loop, so
the click returns at once; it is handled while a cell awaits (`await rt.aio.map(...)`,
the `%%agent --map` magic), but under a blocking `rt.map(...)` only when the cell ends
(use Kernel -> Interrupt there).

`map_cell` is what `%%agent --map DF [--out RESULT]` awaits, with the cell body as the
template; `operator_cell` the same for `--filter DF` and `--classify DF`.
"""

from __future__ import annotations

import asyncio
import html
import sys
import threading
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

import ipywidgets as widgets

from ..batch.engine import explain_map, start_map
from ..batch.explain import aconfirm, cost_gate
from ..batch.progress import BatchProgress
from ..batch.run import BatchRun
from ..errors import InvalidConfig
from ..operators import operator
from .display import LIVE_CLASS
from .widgets import StaticCopy, view_bundle

if TYPE_CHECKING:
    import pandas as pd

    from ..runtime import AgentRuntime

__all__ = [
    "BatchProgressView",
    "TqdmProgress",
    "error_lines",
    "map_cell",
    "operator_cell",
    "show_progress",
]

_MODE_NOTE = "Batch API: half price, results when the whole job has ended (up to 24 h)"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def summary_line(progress: BatchProgress) -> str:
    """One line: counts, tokens, cost, concurrency, rate and ETA (or the job's state)."""
    parts = progress.count_parts()
    if progress.mode == "batch":
        if progress.job_state:
            parts.append(f"job {progress.job_state.removeprefix('JOB_STATE_').lower()}")
    else:
        parts.append(_in_flight(progress))
        if progress.rate_limited:
            parts.append(f"{progress.rate_limited} rate-limited")
        parts.append(f"{progress.rate:.1f} rows/s")
    if not progress.done:
        parts.append(f"ETA {_duration(progress.eta)}")
    parts.append(f"{_duration(progress.elapsed)} elapsed")
    return " · ".join(parts)


def _in_flight(progress: BatchProgress) -> str:
    """Rows in flight against the concurrency limit; more than the limit only after the
    limit was lowered (a rate limit halves it): those rows had started before."""
    if progress.in_flight > progress.concurrency:
        limit = f"concurrency lowered to {progress.concurrency}"
    else:
        limit = f"concurrency {progress.concurrency}"
    return f"{progress.in_flight} in flight ({limit})"


def error_lines(progress: BatchProgress) -> list[str]:
    """The errors by kind: count and the first row's message (at most one line each)."""
    lines = []
    for error in progress.errors:
        message = error.message if len(error.message) <= 160 else error.message[:159] + "…"
        lines.append(f"{error.kind} x{error.count} (first: row {error.row!r}: {message})")
    return lines


class BatchProgressView(widgets.VBox):  # type: ignore[misc]
    """The notebook widget of one run: a bar, the summary line, errors, and Cancel."""

    def __init__(self, run: BatchRun, **kwargs: Any) -> None:
        self.run = run
        self.bar = widgets.IntProgress(
            value=0,
            min=0,
            max=max(1, run.total),
            bar_style="info",
            layout=widgets.Layout(width="100%"),
        )
        self.summary = widgets.HTML()
        self.errors = widgets.HTML()
        self.note = widgets.HTML()
        self.cancel_button = widgets.Button(description="Cancel", icon="stop")
        self.cancel_button.on_click(self._on_cancel)
        # The click (kernel thread) and the run's last update (runtime loop) both write
        # the button: under this lock the run's end is always the last word.
        self._button_lock = threading.Lock()
        self._ended = False
        self._copy = StaticCopy(f"map over {run.total:,} rows")
        super().__init__(
            [
                widgets.HBox([self.bar, self.cancel_button]),
                self.summary,
                self.errors,
                self.note,
                self._copy.hider,
            ],
            **kwargs,
        )
        self.add_class(LIVE_CLASS)
        self.renders = 0
        self.update(run.progress)
        run.add_listener(self.update)

    def __repr__(self) -> str:
        return f"<BatchProgressView {self.run!r}>"

    def _ipython_display_(self) -> None:
        """The view, then its static copy for saved notebooks (see `widgets.StaticCopy`)."""
        plain = f"progress of a map over {self.run.total:,} rows (its summary follows)"
        self._copy.show(view_bundle(self, plain))

    def _on_cancel(self, _button: Any) -> None:
        with self._button_lock:
            if self._ended:
                return
            self.cancel_button.disabled = True
            self.cancel_button.description = "Cancelling…"
        self.run.cancel()

    def update(self, progress: BatchProgress) -> None:
        """Show `progress` (from the run's ticker; writes only the traits that changed)."""
        self.renders += 1
        _set(self.bar, "value", progress.answered)
        style = "info"
        if progress.done:
            style = "success" if progress.state == "done" and not progress.failed else "warning"
        _set(self.bar, "bar_style", style)
        _set(self.summary, "value", html.escape(summary_line(progress)))
        errors = error_lines(progress)
        _set(self.errors, "value", "<br>".join(html.escape(e) for e in errors))
        notes = []
        if progress.stop_reason:
            notes.append(progress.stop_reason)
        if progress.mode == "batch":
            job = f" {progress.job}" if progress.job else ""
            notes.append(f"{_MODE_NOTE}{job}")
        if progress.done:
            redo = progress.ok + progress.cached < progress.total
            tail = ": run the same call again to redo only the rows that are not ok" if redo else ""
            notes.append(progress.state + tail)
        shown_notes = [html.escape(n) for n in notes]
        if progress.stop_reason:
            shown_notes[0] = f"<b>{shown_notes[0]}</b>"
        _set(self.note, "value", "<br>".join(shown_notes))
        if progress.done:
            with self._button_lock:
                self._ended = True
                _set(self.cancel_button, "disabled", True)
                _set(self.cancel_button, "description", progress.state.capitalize())
        lines = [summary_line(progress), *errors, *notes]
        parts = (self.summary.value, self.errors.value, *shown_notes)
        body = "".join(f"<div>{part}</div>" for part in parts if part)
        self._copy.offer(
            f"<div><b>map</b> ({html.escape(progress.state)})</div>{body}",
            "\n".join(lines),
            settled=progress.done,
        )


def _set(widget: Any, name: str, value: Any) -> None:
    if getattr(widget, name) != value:
        setattr(widget, name, value)


class TqdmProgress:
    """The terminal bar of one run (tqdm on stderr); errors are printed once, at the end."""

    def __init__(self, run: BatchRun, file: TextIO | None = None) -> None:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        self.run = run
        self._file = file or sys.stderr
        self.bar = tqdm(total=run.total, unit="row", desc="agentrt map", file=self._file)
        self._closed = False
        run.add_listener(self.update)

    def update(self, progress: BatchProgress) -> None:
        if self._closed:
            return
        self.bar.n = progress.answered
        postfix = f"ok={progress.ok} failed={progress.failed} cached={progress.cached}"
        if progress.mode == "batch":
            postfix += f" job={progress.job_state or 'submitting'}"
        else:
            postfix += f" c={progress.concurrency} tok={progress.tokens_in + progress.tokens_out}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()
        if progress.done:
            self._closed = True
            self.bar.close()
            lines = [f"agentrt map {progress.state}: {summary_line(progress)}"]
            if progress.stop_reason:
                lines.append(progress.stop_reason)
            lines += [f"  {line}" for line in error_lines(progress)]
            print("\n".join(lines), file=self._file)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a widget can show)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_progress(
    run: BatchRun, *, always: bool = False
) -> BatchProgressView | TqdmProgress | None:
    """The widget in a notebook; else a tqdm bar on a terminal (or anywhere, if `always`)."""
    if in_notebook():
        from IPython.display import display

        view = BatchProgressView(run)
        display(view)  # type: ignore[no-untyped-call]
        return view
    if always or sys.stderr.isatty():
        try:
            return TqdmProgress(run)
        except ImportError:  # tqdm comes with the [notebook] extra
            return None
    return None


async def map_cell(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    *,
    out: str | None = None,
    namespace: MutableMapping[str, Any] | None = None,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """What `%%agent --map DF [--out RESULT]` awaits: the run over `frame` with the cell
    body as `template`, shown as a widget, its frame returned (and stored in
    `namespace[out]`, the user's namespace by default).

    `options` are those of `runtime.map` (concurrency, schema, budget_tokens, mode, ...).
    An interrupt cancels the run; the partial frame is still stored in `out`, then the
    interrupt goes on (CancelledError) so Run All stops. A run estimated above
    `AgentMagics.confirm_cost` asks first (`CostNotApproved` if not approved)."""
    if (gate := cost_gate()) is not None:
        plan = await asyncio.to_thread(explain_map, runtime, frame, template, **options)
        await aconfirm(gate, plan)
    run = start_map(runtime, frame, template, **options)
    if progress:
        show_progress(run, always=True)
    try:
        result = await run.aresult()
    except BaseException:
        settled = run.future.done() and not run.future.cancelled()
        if out is not None and settled and run.future.exception() is None:
            _namespace(namespace)[out] = run.future.result()
        raise
    if out is not None:
        _namespace(namespace)[out] = result
    return result


async def operator_cell(
    runtime: AgentRuntime,
    name: str,
    frame: pd.DataFrame,
    template: str,
    *,
    out: str | None = None,
    namespace: MutableMapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    """What `%%agent --filter DF` / `--classify DF` awaits: operator `name` over `frame`
    with the cell body as `template`, its runs shown as widgets, its result returned (and
    stored in `namespace[out]`)."""
    result = await operator(name).arun(runtime, frame, template, progress=True, **options)
    if out is not None:
        _namespace(namespace)[out] = result
    return result


def _namespace(namespace: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
    if namespace is not None:
        return namespace
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise InvalidConfig("outside IPython, out= needs a namespace= to store into", field="out")
    user_ns: MutableMapping[str, Any] = shell.user_ns
    return user_ns
