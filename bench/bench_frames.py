"""Figure 7: `history_frame` and `ledger_frame` for 100,000 messages / ledger entries.

The lists are built directly (no runtime): alternating user and model messages, every
tenth model message with a thought and a tool call, and a ledger row per model message.
The baseline is the floor for a frame of that size: `pd.DataFrame` from the same values
already flattened to plain columns (no part splitting, no dtypes), timed in the same run.

Target: < 1 s each (median).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from _common import dist, main, row, show

from agentrt_jupyter import (
    ConversationMessage,
    FunctionCallPart,
    LedgerEntry,
    TextPart,
    Usage,
    history_frame,
    ledger_frame,
)

FIGURE = "7. DataFrames"
SIZE = 100_000
START = datetime(2026, 1, 1, tzinfo=UTC)


def messages(n: int) -> list[ConversationMessage]:
    result = []
    for i in range(n):
        turn, when = i // 2 + 1, START + timedelta(seconds=i)
        if i % 2 == 0:
            result.append(ConversationMessage("user", (TextPart(f"question {i}"),), turn, when))
            continue
        parts: tuple[Any, ...] = (TextPart(f"answer {i} " * 5),)
        if i % 20 == 1:
            parts = (TextPart("thinking", True), *parts, FunctionCallPart("f", {"x": i}, f"c{i}"))
        usage = Usage(prompt_tokens=i, candidates_tokens=10, total_tokens=i + 10)
        result.append(
            ConversationMessage("model", parts, turn, when, "complete", usage, "m", "STOP")
        )
    return result


def ledger(n: int) -> list[LedgerEntry]:
    usage = Usage(prompt_tokens=100, candidates_tokens=10, total_tokens=110)
    return [
        LedgerEntry(
            f"agent-{i % 10}",
            i // 10 + 1,
            0,
            "m",
            START + timedelta(seconds=i),
            usage,
            0.1,
            0.5,
            "STOP",
            "ok",
        )
        for i in range(n)
    ]


def flat(items: list[Any], fields: list[str]) -> pd.DataFrame:
    """The baseline: the same number of rows and columns from already-plain values."""
    return pd.DataFrame({name: [getattr(item, name) for item in items] for name in fields})


def timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reps = 3 if quick else 7
    history, entries = messages(SIZE), ledger(SIZE)
    columns = {
        "history": len(history_frame(history[:10], agent="a").columns),
        "ledger": len(ledger_frame(entries[:10]).columns),
    }
    base_fields = {
        "history": ["role", "turn", "time", "status", "usage", "model", "finish_reason", "parts"],
        "ledger": [f for f in LedgerEntry.__dataclass_fields__],
    }
    times: dict[str, list[float]] = {"history": [], "ledger": []}
    base: dict[str, list[float]] = {"history": [], "ledger": []}
    for _ in range(reps):
        times["history"].append(timed(history_frame, history))
        base["history"].append(timed(flat, history, base_fields["history"]))
        times["ledger"].append(timed(ledger_frame, entries))
        base["ledger"].append(timed(flat, entries, base_fields["ledger"]))
    rows = []
    for kind, fn in (("history", "history_frame"), ("ledger", "ledger_frame")):
        ours, floor = dist(times[kind]), dist(base[kind])
        rows.append(
            row(
                FIGURE,
                f"{fn} of {SIZE:,} {'messages' if kind == 'history' else 'ledger entries'}",
                show(ours, "ms", 1000, 0),
                f"plain DataFrame, same rows: {show(floor, 'ms', 1000, 0)}",
                f"{ours['median'] / floor['median']:.1f}x",
                "< 1 s",
                ours["median"] < 1.0,
                f"{columns[kind]} columns",
            )
        )
    return rows, {"seconds": times, "baseline_seconds": base, "columns": columns}


if __name__ == "__main__":
    main("frames", __doc__, run)
