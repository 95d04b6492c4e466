"""What `%agent list` shows. The agents of a runtime as rows: one `agent_row` per
`AgentInfo`, JSON-ready, read by `%agent list` (`agents_frame`), the `RuntimeMonitor` and
the lab comm's snapshots; and the stored conversations (`stored_frame`).

Only the standard library at import (the lab comm loads with the extension); pandas is
imported by the frames when called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from ..runtime import AgentInfo
    from ..store import StoredConversation


GONE = ("shutdown", "disconnected")
"""The states of an agent that was stopped (its record stays listed)."""


class AgentRow(TypedDict):
    """One agent: its `AgentInfo`, JSON-ready (the lab comm sends it as it is)."""

    id: str
    name: str
    model: str
    state: str
    turn_count: int
    queued: int
    current_turn: int | None
    running_for: float | None
    usage: dict[str, int]


def agent_row(info: AgentInfo) -> AgentRow:
    return AgentRow(
        id=info.id,
        name=info.name,
        model=info.model,
        state=info.state,
        turn_count=info.turn_count,
        queued=info.queued,
        current_turn=info.current_turn,
        running_for=info.running_for,
        # A count the service did not report is left out (missing, never 0).
        usage={k: int(v) for k, v in dataclasses.asdict(info.total_usage).items() if v is not None},
    )


def agent_rows(infos: Sequence[AgentInfo]) -> list[AgentRow]:
    return [agent_row(info) for info in infos]


def agents_frame(infos: Sequence[AgentInfo]) -> Any:
    """The agents as a DataFrame: counts as nullable integers, `running_for` in seconds to
    a tenth (NaN when idle)."""
    import pandas as pd

    rows = agent_rows(infos)
    running = [
        float("nan") if r["running_for"] is None else round(r["running_for"], 1) for r in rows
    ]
    return pd.DataFrame(
        {
            "name": pd.array([r["name"] for r in rows], dtype="string"),
            "model": pd.array([r["model"] for r in rows], dtype="string"),
            "state": pd.array([r["state"] for r in rows], dtype="string"),
            "turns": pd.array([r["turn_count"] for r in rows], dtype="Int64"),
            "queued": pd.array([r["queued"] for r in rows], dtype="Int64"),
            "running_for": pd.Series(running, dtype="float64"),
            "total_tokens": pd.array([r["usage"].get("total_tokens") for r in rows], dtype="Int64"),
        }
    )


def stored_frame(conversations: Sequence[StoredConversation], *, everywhere: bool) -> Any:
    """What `%agent resume` can bring back: one row per stored conversation with messages,
    newest first (resume takes the newest of a name); `everywhere` adds the namespace.

    A notebook that is restarted and run again keeps a conversation per run under the
    same name, often with the same turns (replayed from the reply cache): when each was
    `created` tells them apart."""
    import pandas as pd

    stored = sorted(
        (c for c in conversations if c.messages), key=lambda c: c.last_activity, reverse=True
    )
    frame = pd.DataFrame(
        {
            "namespace": pd.array([c.namespace for c in stored], dtype="string"),
            "name": pd.array([c.name for c in stored], dtype="string"),
            "created": pd.Series([_local_time(c.created) for c in stored], dtype="datetime64[s]"),
            "last_activity": pd.Series(
                [_local_time(c.last_activity) for c in stored], dtype="datetime64[s]"
            ),
            "turns": pd.array([c.turns for c in stored], dtype="Int64"),
            "messages": pd.array([c.messages for c in stored], dtype="Int64"),
            "size": pd.array([size_text(c.size) for c in stored], dtype="string"),
            "holder": pd.array([c.holder or "" for c in stored], dtype="string"),
            "id": pd.array([c.id for c in stored], dtype="string"),
        }
    )
    return frame if everywhere else frame.drop(columns="namespace")


def size_text(count: int) -> str:
    """A size in bytes as a person reads it: 950 B, 12.3 kB, 4.5 MB."""
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"


def _local_time(moment: datetime) -> datetime:
    """A UTC time as the wall clock here shows it, to the second."""
    return moment.astimezone().replace(tzinfo=None, microsecond=0)
