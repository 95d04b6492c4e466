"""`RuntimeMonitor`: every agent of a runtime at a glance, with Cancel / Shutdown."""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from ..errors import AgentError, RuntimeClosed
from ..runtime import AgentInfo, AgentRuntime
from .display import LIVE_CLASS
from .listing import GONE, agent_row
from .livewidget import StaticCopy, Writer, view_bundle
from .transcript import plural, token_count

__all__ = ["RuntimeMonitor"]

MONITOR_INTERVAL = 0.25
"""The least time between two renders (every streamed chunk is a change)."""
ELAPSED_TICK = 1.0
"""While a turn runs the monitor re-renders this often even without a change (elapsed time)."""


@dataclass
class _Row:
    """The widgets of one agent's row in the monitor."""

    cells: tuple[widgets.HTML, ...]
    cancel: widgets.Button
    shutdown: widgets.Button

    @property
    def members(self) -> list[widgets.Widget]:
        return [*self.cells, self.cancel, self.shutdown]


class RuntimeMonitor(widgets.VBox):  # type: ignore[misc]
    """Every agent of a runtime: state, current turn, elapsed time, tokens, Cancel / Shutdown.

    Fed by the runtime's change signal: it renders when agents or turns change and while a
    reply streams (tokens count up, at most `1 / MONITOR_INTERVAL` times a second), ticks
    the elapsed time every `ELAPSED_TICK` while a turn runs, and sends nothing while all
    are idle. `refresh()` updates it now.
    """

    COLUMNS = ("agent", "model", "state", "turn", "elapsed", "queued", "tokens")

    def __init__(self, runtime: AgentRuntime, **kwargs: Any) -> None:
        self._runtime = runtime
        self.summary = widgets.HTML()
        self.grid = widgets.GridBox(
            layout=widgets.Layout(
                grid_template_columns=f"repeat({len(self.COLUMNS)}, auto) auto auto",
                grid_gap="2px 12px",
                align_items="center",
            )
        )
        self._header = [widgets.HTML(f"<b>{name}</b>") for name in self.COLUMNS]
        self._header += [widgets.HTML(""), widgets.HTML("")]
        self.rows: dict[str, _Row] = {}
        self._copy = StaticCopy("RuntimeMonitor")
        super().__init__([self.summary, self.grid, self._copy.hider], **kwargs)
        self.add_class(LIVE_CLASS)
        self._writer = Writer(runtime, self._render, MONITOR_INTERVAL, watch=True)

    def __repr__(self) -> str:
        return f"<RuntimeMonitor agents={len(self.rows)}>"

    def _ipython_display_(self) -> None:
        """The view, then its static copy for saved notebooks (see `StaticCopy`)."""
        self._copy.show(view_bundle(self, "RuntimeMonitor (its agent table follows)"))
        self._writer.wake()

    def refresh(self) -> concurrent.futures.Future[None]:
        """Update now (coalesced); the future resolves once the widgets show the new state."""
        return self._writer.wake()

    def close(self) -> None:
        """Stop the refresh task, then close every child widget."""
        self._writer.close()
        for row in self.rows.values():
            for child in row.members:
                child.close()
        for child in (*self._header, self.summary, self.grid, self._copy.hider):
            child.close()
        super().close()

    async def _render(self) -> float | None:
        try:
            infos = await self._runtime.aio.agents()
        except RuntimeClosed:
            infos = []
        for info in infos:
            row = self.rows.get(info.id) or self._add_row(info)
            for cell, value in zip(row.cells, cells_of(info), strict=True):
                cell.value = html.escape(value)
            row.cancel.disabled = info.current_turn is None
            row.shutdown.disabled = info.state in GONE
        live = {info.id for info in infos}
        gone = [self.rows.pop(agent_id) for agent_id in list(self.rows) if agent_id not in live]
        children = (*self._header, *(w for row in self.rows.values() for w in row.members))
        if tuple(self.grid.children) != children:
            self.grid.children = children
        for row in gone:
            for child in row.members:
                child.close()
        running = sum(info.state == "running" for info in infos)
        summary = f"{plural(len(infos), 'agent')}, {running} running"
        self.summary.value = f"<small>{summary}</small>"
        again = self._copy.offer(
            f"<b>Agents</b> <small>(RuntimeMonitor): {summary}</small>" + _agents_table(infos),
            "\n".join([f"RuntimeMonitor: {summary}", *(" · ".join(cells_of(i)) for i in infos)]),
            settled=not running,
        )
        if running:
            return ELAPSED_TICK if again is None else min(again, ELAPSED_TICK)
        return again

    def _add_row(self, info: AgentInfo) -> _Row:
        cancel = widgets.Button(description="Cancel", icon="stop", layout={"width": "auto"})
        shutdown = widgets.Button(
            description="Shutdown", icon="power-off", layout={"width": "auto"}
        )
        cancel.on_click(lambda _: self._act(self._runtime.aio.cancel, info.id))
        shutdown.on_click(lambda _: self._act(self._runtime.aio.shutdown_agent, info.id))
        row = _Row(tuple(widgets.HTML() for _ in self.COLUMNS), cancel, shutdown)
        self.rows[info.id] = row
        return row

    def _act(self, action: Callable[[str], Awaitable[Any]], agent_id: str) -> None:
        async def run() -> None:
            with contextlib.suppress(AgentError):
                await action(agent_id)
            self._writer.wake_on_loop()

        self._writer.post(lambda: self._writer.spawn(run()))


def cells_of(info: AgentInfo) -> tuple[str, ...]:
    """The monitor's columns (`RuntimeMonitor.COLUMNS`) of one agent's row, as text."""
    row = agent_row(info)
    running_for, turn = row["running_for"], row["current_turn"]
    return (
        row["name"],
        row["model"],
        row["state"],
        _turn_cell(turn),
        "" if running_for is None else f"{running_for:.1f} s",
        str(row["queued"]),
        token_count(row["usage"].get("total_tokens")),
    )


def _turn_cell(turn: int | None) -> str:
    """The running turn's number; a turn gets it at its first step (0 until then)."""
    if turn is None:
        return ""
    return str(turn) if turn else "starting"


def _agents_table(infos: Sequence[AgentInfo]) -> str:
    if not infos:
        return "<p><i>No agents.</i></p>"
    cell = "padding:1px 10px 1px 0;text-align:left"
    head = "".join(f'<th style="{cell}">{name}</th>' for name in RuntimeMonitor.COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f'<td style="{cell}">{html.escape(v)}</td>' for v in cells_of(i)) + "</tr>"
        for i in infos
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
