"""DataFrame exports of history, per-turn usage and the per-call ledger, with fixed schemas.

Every frame has a `RangeIndex` and the same columns and dtypes whether it has rows or
not, so frames of several agents concatenate cleanly and a saved frame reads back
equal: `df.to_parquet(p)` + `pd.read_parquet(p)` as-is, and `df.to_csv(p)` +
`read_frame(p, kind)` (CSV has no dtypes; `read_frame` restores them). One exception to
"as-is": a parquet file of an empty frame has no dictionary page, so pyarrow reads its
`category` columns back without categories; `read_frame(p, kind)` restores them.

Dtypes: timestamps are `datetime64[us, UTC]` (microseconds: exactly what Python's
`datetime` holds). Text is the `string` dtype; `text` and `thoughts` are never missing
(`""` when there is none) and every other text column is `<NA>` rather than `""` when
absent, which is what keeps CSV (where both are an empty field) lossless. Statuses are
`category` with fixed categories, so an unused status is still a category.
Token counts are nullable `Int64`: `<NA>` where a service reported none (an
OpenAI-compatible server that sends no usage: missing, never 0; a turn's sum with a
missing count is missing) and, in history, on user messages. Durations are `float64`
seconds, `NaN` where unknown.

`history_frame` — one row per message, in history order:

    agent string, turn int64, role category[user, model, summary],
    status category[complete, cancelled, incomplete, error], time datetime64[us, UTC],
    text string, thoughts string, tool_calls string (JSON list of {name, args, id}),
    tool_results string (JSON list of {name, response, id}),
    attachments string (MIME types of inline data, comma-separated),
    model string (without its provider prefix), provider string, finish_reason string,
    prompt_tokens Int64, cached_tokens Int64, candidates_tokens Int64, thoughts_tokens Int64,
    tool_use_prompt_tokens Int64, total_tokens Int64

`usage_frame` — one row per turn that made API calls, ordered by agent then turn:

    agent string, turn int64, calls int64, rate_limited int64 (calls answered by a 429),
    started datetime64[us, UTC] (first call), model string (last call),
    status category[ok, retried, replayed, cancelled, error, rate-limited] (last call),
    finish_reason string (last call), prompt_tokens Int64, cached_tokens Int64,
    candidates_tokens Int64, thoughts_tokens Int64, tool_use_prompt_tokens Int64,
    total_tokens Int64, time_to_first_chunk float64 (from the first call's start),
    duration float64 (sum over calls), retry_wait float64 (sum over calls)

`ledger_frame` — one row per API call (tool hops and retries included):

    agent string, turn int64, call int64, model string, provider string (gemini, vertex,
    openai, anthropic, ollama), started datetime64[us, UTC],
    status category[ok, retried, replayed, cancelled, error, rate-limited], finish_reason string,
    prompt_tokens Int64, cached_tokens Int64, candidates_tokens Int64,
    thoughts_tokens Int64, tool_use_prompt_tokens Int64, total_tokens Int64,
    time_to_first_chunk float64, duration float64, retry_wait float64, error string,
    saved_tokens int64 (a reply replayed from the cache: what it cost when recorded)

Frames are built column-wise (one list per column, one constructor): 100,000 rows take
about 0.2 to 0.3 s.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import pandas as pd

from .config import split_model
from .content import FunctionCallPart, FunctionResponsePart, TextPart
from .conversation import CallStatus, ConversationMessage, LedgerEntry

if TYPE_CHECKING:
    from .runtime import Agent, AgentRuntime

FrameKind: TypeAlias = Literal["history", "usage", "ledger"]

TIMESTAMP = pd.DatetimeTZDtype("us", "UTC")
ROLES = pd.CategoricalDtype(["user", "model", "summary"])
MESSAGE_STATUSES = pd.CategoricalDtype(["complete", "cancelled", "incomplete", "error"])
CALL_STATUSES = pd.CategoricalDtype(list(typing.get_args(CallStatus)))
TOKEN_FIELDS = (
    "prompt_tokens",
    "cached_tokens",
    "candidates_tokens",
    "thoughts_tokens",
    "tool_use_prompt_tokens",
    "total_tokens",
)

HISTORY_SCHEMA: dict[str, Any] = {
    "agent": "string",
    "turn": "int64",
    "role": ROLES,
    "status": MESSAGE_STATUSES,
    "time": TIMESTAMP,
    "text": "string",
    "thoughts": "string",
    "tool_calls": "string",
    "tool_results": "string",
    "attachments": "string",
    "model": "string",
    "provider": "string",
    "finish_reason": "string",
    **dict.fromkeys(TOKEN_FIELDS, "Int64"),
}
USAGE_SCHEMA: dict[str, Any] = {
    "agent": "string",
    "turn": "int64",
    "calls": "int64",
    "rate_limited": "int64",
    "started": TIMESTAMP,
    "model": "string",
    "status": CALL_STATUSES,
    "finish_reason": "string",
    **dict.fromkeys(TOKEN_FIELDS, "Int64"),
    "time_to_first_chunk": "float64",
    "duration": "float64",
    "retry_wait": "float64",
}
LEDGER_SCHEMA: dict[str, Any] = {
    "agent": "string",
    "turn": "int64",
    "call": "int64",
    "model": "string",
    "provider": "string",
    "started": TIMESTAMP,
    "status": CALL_STATUSES,
    "finish_reason": "string",
    **dict.fromkeys(TOKEN_FIELDS, "Int64"),
    "time_to_first_chunk": "float64",
    "duration": "float64",
    "retry_wait": "float64",
    "error": "string",
    "saved_tokens": "int64",
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "history": HISTORY_SCHEMA,
    "usage": USAGE_SCHEMA,
    "ledger": LEDGER_SCHEMA,
}
NEVER_MISSING_TEXT = frozenset({"text", "thoughts"})
"""String columns that hold `""` rather than `<NA>`; the others hold `<NA>`, never `""`."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def history_frame(
    source: Agent | Sequence[ConversationMessage], *, agent: str | None = None
) -> pd.DataFrame:
    """One row per message, so a conversation can be filtered, joined and saved like data.

    `source` is an Agent (its name fills `agent`) or a list of messages (`agent=` names them).
    """
    if not isinstance(source, Sequence):
        agent = agent or source.name
        source = source.history()
    messages = list(source)
    parts = [_split_parts(m) for m in messages]
    columns: dict[str, Any] = {
        "agent": [agent] * len(messages),
        "turn": [m.turn for m in messages],
        "role": [m.role for m in messages],
        "status": [m.status for m in messages],
        "time": [m.time for m in messages],
    }
    for index, name in enumerate(("text", "thoughts", "tool_calls", "tool_results", "attachments")):
        columns[name] = [split[index] for split in parts]
    models = [split_model(m.model) if m.model else (None, None) for m in messages]
    columns["model"] = [model for _, model in models]
    columns["provider"] = [provider for provider, _ in models]
    columns["finish_reason"] = [m.finish_reason or None for m in messages]
    usages = [m.usage for m in messages]
    for name in TOKEN_FIELDS:
        columns[name] = [None if u is None else getattr(u, name) for u in usages]
    return _frame(columns, HISTORY_SCHEMA)


def ledger_frame(source: AgentRuntime | Sequence[LedgerEntry]) -> pd.DataFrame:
    """One row per API call of every agent: what each call cost, how long, how it ended."""
    entries = list(source) if isinstance(source, Sequence) else source.ledger()
    columns: dict[str, Any] = {
        "agent": [e.agent for e in entries],
        "turn": [e.turn for e in entries],
        "call": [e.call for e in entries],
        "model": [e.model or None for e in entries],
        "provider": [e.provider or None for e in entries],
        "started": [e.started for e in entries],
        "status": [e.status for e in entries],
        "finish_reason": [e.finish_reason or None for e in entries],
    }
    usages = [e.usage for e in entries]
    for name in TOKEN_FIELDS:
        columns[name] = [getattr(u, name) for u in usages]
    columns["time_to_first_chunk"] = [e.time_to_first_chunk for e in entries]
    columns["duration"] = [e.duration for e in entries]
    columns["retry_wait"] = [e.retry_wait for e in entries]
    columns["error"] = [e.error or None for e in entries]
    columns["saved_tokens"] = [e.saved_tokens for e in entries]
    return _frame(columns, LEDGER_SCHEMA)


def usage_frame(source: Agent | Sequence[LedgerEntry]) -> pd.DataFrame:
    """One row per turn: the sum of its calls, so per-turn cost needs no groupby."""
    ledger = ledger_frame(list(source) if isinstance(source, Sequence) else source.ledger())
    if ledger.empty:
        return empty_frame("usage")
    ledger = ledger.sort_values(["agent", "turn"], kind="stable", ignore_index=True)
    agents = ledger["agent"].to_numpy(dtype=object)
    turns = ledger["turn"].to_numpy()
    new_turn = np.ones(len(ledger), dtype=bool)
    new_turn[1:] = (agents[1:] != agents[:-1]) | (turns[1:] != turns[:-1])
    starts = np.flatnonzero(new_turn)
    ends = np.append(starts[1:], len(ledger)) - 1
    group = np.cumsum(new_turn) - 1
    started = pd.DatetimeIndex(ledger["started"])
    micros = started.asi8
    first_chunk = (micros - micros[starts][group]) / 1e6 + ledger["time_to_first_chunk"].to_numpy()
    chunked = np.flatnonzero(~np.isnan(first_chunk))
    turn_first_chunk = np.full(len(starts), np.nan)
    with_chunk, first_of_group = np.unique(group[chunked], return_index=True)
    turn_first_chunk[with_chunk] = first_chunk[chunked[first_of_group]]

    def total(name: str) -> Any:
        return np.add.reduceat(ledger[name].to_numpy(), starts)

    def total_count(name: str) -> Any:
        """A turn's sum of one count: missing if a call of it has it missing."""
        column = ledger[name]
        sums = np.add.reduceat(column.to_numpy(dtype=np.int64, na_value=0), starts)
        gaps = np.logical_or.reduceat(column.isna().to_numpy(), starts)
        return pd.arrays.IntegerArray(sums, gaps)

    columns: dict[str, Any] = {
        "agent": agents[starts],
        "turn": turns[starts],
        "calls": ends - starts + 1,
        "rate_limited": np.add.reduceat(
            (ledger["status"] == "rate-limited").to_numpy(dtype=np.int64), starts
        ),
        "started": started[starts],
        "model": ledger["model"].to_numpy(dtype=object)[ends],
        "status": ledger["status"].to_numpy(dtype=object)[ends],
        "finish_reason": ledger["finish_reason"].to_numpy(dtype=object)[ends],
        **{name: total_count(name) for name in TOKEN_FIELDS},
        "time_to_first_chunk": turn_first_chunk,
        "duration": total("duration"),
        "retry_wait": total("retry_wait"),
    }
    return _frame(columns, USAGE_SCHEMA)


def empty_frame(kind: FrameKind) -> pd.DataFrame:
    """A frame with no rows and the full schema of `kind`."""
    return _frame({name: [] for name in _schema(kind)}, _schema(kind))


def read_frame(path: str | os.PathLike[str], kind: FrameKind) -> pd.DataFrame:
    """Read a frame saved with `to_csv` or `to_parquet` back with its exact dtypes.

    CSV written with or without the index is accepted; text with commas, quotes, newlines
    and lone carriage returns survives, and so do strings such as "NA" or "null".
    """
    schema = _schema(kind)
    if os.fspath(path).endswith((".parquet", ".pq")):
        return conform(pd.read_parquet(path), kind)
    with open(path, encoding="utf-8", newline="") as stream:
        header = stream.readline()
    options: dict[str, Any] = {} if header.endswith("\r\n") else {"lineterminator": "\n"}
    read_as = {
        name: dtype if dtype in ("int64", "Int64") else "string" for name, dtype in schema.items()
    }
    raw = pd.read_csv(
        path,
        dtype=read_as,
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8",
        **options,
    )
    index: pd.Index = pd.RangeIndex(len(raw))
    if len(raw.columns) == len(schema) + 1:
        first = str(raw.columns[0])
        written = pd.Index(raw.pop(first).astype("int64").to_numpy())
        if not written.equals(index):
            index = written.rename(None if first.startswith("Unnamed:") else first)
    columns: dict[str, Any] = {}
    for name, dtype in schema.items():
        column = raw[name]
        if name in NEVER_MISSING_TEXT:
            column = column.fillna("")
        if dtype is TIMESTAMP:
            columns[name] = pd.DatetimeIndex(pd.to_datetime(column, utc=True, format="ISO8601"))
        elif dtype == "float64":
            columns[name] = [float(value) for value in column.fillna("nan")]
        else:
            columns[name] = column.to_numpy()
    frame = _frame(columns, schema)
    frame.index = index
    return frame


def conform(frame: pd.DataFrame, kind: FrameKind) -> pd.DataFrame:
    """`frame` with exactly the columns, order and dtypes of `kind` (e.g. after a merge)."""
    schema = _schema(kind)
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise ValueError(f"not a {kind} frame: missing columns {missing}")
    return frame[list(schema)].astype(schema)


def _schema(kind: str) -> dict[str, Any]:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(SCHEMAS)}, got {kind!r}") from None


def _frame(columns: dict[str, Any], schema: dict[str, Any]) -> pd.DataFrame:
    converters: dict[Any, Callable[[Any, Any], Any]] = {
        TIMESTAMP: _timestamps,
        "int64": lambda values, _: np.asarray(values, dtype=np.int64),
        "float64": lambda values, _: np.array(
            [np.nan if v is None else v for v in values], dtype=np.float64
        ),
    }
    data = {}
    for name, dtype in schema.items():
        convert = converters.get(dtype)
        values = columns[name]
        if convert is not None:
            data[name] = convert(values, dtype)
        elif isinstance(dtype, pd.CategoricalDtype):
            data[name] = pd.Categorical(values, dtype=dtype)
        else:
            data[name] = pd.array(values, dtype=dtype)
    return pd.DataFrame(data, index=pd.RangeIndex(len(columns[next(iter(schema))])))


def _timestamps(values: Any, _dtype: Any) -> Any:
    """Exact microsecond UTC timestamps; naive datetimes are taken as UTC."""
    if isinstance(values, pd.DatetimeIndex):
        return values.tz_convert("UTC").as_unit("us")
    micros = np.fromiter(
        (
            ((v if v.tzinfo is not None else v.replace(tzinfo=UTC)) - _EPOCH) // _MICROSECOND
            for v in values
        ),
        dtype=np.int64,
        count=len(values),
    )
    return pd.DatetimeIndex(micros.view("datetime64[us]")).tz_localize("UTC")


def _split_parts(
    message: ConversationMessage,
) -> tuple[str, str, str | None, str | None, str | None]:
    """text, thoughts, tool calls (JSON), tool results (JSON), attachments: one pass."""
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    attachments: list[str] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            (thoughts if part.thought else text).append(part.text)
        elif isinstance(part, FunctionCallPart):
            calls.append({"name": part.name, "args": part.args, "id": part.id})
        elif isinstance(part, FunctionResponsePart):
            results.append({"name": part.name, "response": part.response, "id": part.id})
        else:
            attachments.append(part.mime_type)
    return (
        "".join(text),
        "".join(thoughts),
        _json(calls),
        _json(results),
        ", ".join(attachments) or None,
    )


def _json(items: list[dict[str, Any]]) -> str | None:
    return json.dumps(items, ensure_ascii=False, default=repr) if items else None


COMPACT_COLUMNS: dict[str, tuple[str, ...]] = {
    "history": ("turn", "role", "status", "time", "text", "total_tokens"),
    "usage": (
        "agent", "turn", "calls", "status", "started", "prompt_tokens", "candidates_tokens",
        "duration",
    ),
    "ledger": (
        "agent", "turn", "call", "status", "started", "prompt_tokens", "candidates_tokens",
        "duration", "error",
    ),
}  # fmt: skip
"""What a person reads first in each frame; the rest stays in the frame, not on screen."""
MISSING_COUNT = "—"
"""A token count the service did not report, as a compact view shows it."""
COMPACT_TEXT = 60
"""Characters of a text cell shown in a compact view (the frame keeps all of it)."""


class CompactFrame(pd.DataFrame):  # type: ignore[misc]  # pandas ships no type stubs here
    """The full, typed frame, displayed compactly: a few columns, local times to the second,
    short text, no wrapping. Any operation on it gives a plain DataFrame."""

    _metadata = ["compact_columns"]
    compact_columns: tuple[str, ...]

    @property
    def _constructor(self) -> Any:
        return pd.DataFrame

    def view(self) -> pd.DataFrame:
        """The compact view itself, as a plain DataFrame of strings and numbers."""
        frame = pd.DataFrame(self)
        shown = frame[[c for c in self.compact_columns if c in frame.columns]].copy()
        local = datetime.now().astimezone().tzinfo
        for name in shown.columns:
            column = shown[name]
            if isinstance(column.dtype, pd.DatetimeTZDtype):
                shown[name] = column.dt.tz_convert(local).dt.strftime("%Y-%m-%d %H:%M:%S")
            elif name == "duration":
                shown[name] = column.round(2)
            elif pd.api.types.is_string_dtype(column.dtype) and name != "status":
                shown[name] = column.map(_short, na_action="ignore").astype("string")
            if isinstance(shown[name].dtype, pd.api.extensions.ExtensionDtype):
                # to_html / to_string ignore na_rep for pandas' NA: show a blank instead.
                values = shown[name]
                shown[name] = values.astype(object).where(values.notna(), "")
                if name in TOKEN_FIELDS:
                    shown.loc[_unreported(frame, values), name] = MISSING_COUNT
        return shown

    def _repr_html_(self) -> str:
        view = self.view()
        table = view.to_html(na_rep="", border=0)
        hidden = len(self.columns) - len(view.columns)
        rows = f"{len(self):,} row{'' if len(self) == 1 else 's'}"
        more = f"; {hidden} more column{'' if hidden == 1 else 's'} in the frame" if hidden else ""
        note = f"<sub>{rows}{more}</sub>"
        return f'<div style="white-space: nowrap; overflow-x: auto">{table}{note}</div>'

    def __repr__(self) -> str:
        return str(self.view().to_string(na_rep=""))


def compact(frame: pd.DataFrame, kind: FrameKind) -> CompactFrame:
    """`frame` itself (all columns and dtypes) with the compact display of `kind`."""
    shown = CompactFrame(frame)
    shown.compact_columns = COMPACT_COLUMNS[kind]
    return shown


def as_shown(frame: pd.DataFrame) -> CompactFrame:
    """`frame` itself, displayed whole but compactly (blank for missing values, no wrapping)."""
    shown = CompactFrame(frame)
    shown.compact_columns = tuple(frame.columns)
    return shown


def _unreported(frame: pd.DataFrame, counts: pd.Series) -> pd.Series:
    """Calls whose count the service did not report (in history: model messages only;
    a user message has no usage at all)."""
    missing = counts.isna()
    return missing & (frame["role"] == "model") if "role" in frame.columns else missing


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= COMPACT_TEXT else line[: COMPACT_TEXT - 1] + "…"
