"""DataFrame exports: exact schemas from a real runtime, and lossless parquet / CSV round-trips."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrt_jupyter import (
    Agent,
    AgentRuntime,
    ConversationMessage,
    LedgerEntry,
    TextDelta,
    TurnCancelled,
    Usage,
)
from agentrt_jupyter.content import (
    BlobPart,
    FunctionCallPart,
    FunctionResponsePart,
    TextPart,
)
from agentrt_jupyter.frames import (
    COMPACT_COLUMNS,
    FrameKind,
    compact,
    empty_frame,
    history_frame,
    ledger_frame,
    read_frame,
    usage_frame,
)
from agentrt_jupyter.server.process import LocalServer

from .conftest import runtime_config

UTC_US = "datetime64[us, UTC]"
TOKENS = [
    "prompt_tokens",
    "cached_tokens",
    "candidates_tokens",
    "thoughts_tokens",
    "tool_use_prompt_tokens",
    "total_tokens",
]
HISTORY_DTYPES = {
    "agent": "string",
    "turn": "int64",
    "role": "category",
    "status": "category",
    "time": UTC_US,
    "text": "string",
    "thoughts": "string",
    "tool_calls": "string",
    "tool_results": "string",
    "attachments": "string",
    "model": "string",
    "provider": "string",
    "finish_reason": "string",
    **dict.fromkeys(TOKENS, "Int64"),
}
USAGE_DTYPES = {
    "agent": "string",
    "turn": "int64",
    "calls": "int64",
    "rate_limited": "int64",
    "started": UTC_US,
    "model": "string",
    "status": "category",
    "finish_reason": "string",
    **dict.fromkeys(TOKENS, "Int64"),
    "time_to_first_chunk": "float64",
    "duration": "float64",
    "retry_wait": "float64",
}
LEDGER_DTYPES = {
    "agent": "string",
    "turn": "int64",
    "call": "int64",
    "model": "string",
    "provider": "string",
    "started": UTC_US,
    "status": "category",
    "finish_reason": "string",
    **dict.fromkeys(TOKENS, "Int64"),
    "time_to_first_chunk": "float64",
    "duration": "float64",
    "retry_wait": "float64",
    "error": "string",
    "saved_tokens": "int64",
}
CATEGORIES = {
    "role": ["user", "model", "summary"],
    "message_status": ["complete", "cancelled", "incomplete", "error"],
    "call_status": ["ok", "retried", "replayed", "cancelled", "error", "rate-limited"],
}


def assert_schema(frame: pd.DataFrame, dtypes: dict[str, str]) -> None:
    assert list(frame.columns) == list(dtypes)
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == dtypes
    assert isinstance(frame.index, pd.RangeIndex)


def lookup(city: str) -> dict[str, Any]:
    """Look up facts about a city."""
    return {"city": city, "population": 2_100_000}


@dataclass
class Recorded:
    runtime: AgentRuntime
    writer: Agent
    helper: Agent
    tag: str


@pytest.fixture(scope="module")
def recorded(server: LocalServer) -> Iterator[Recorded]:
    """A runtime with a few real turns: plain, thoughts + tool call, cancelled, rate-limited."""
    tag = f"tag{uuid.uuid4().hex[:10]}"
    runtime = AgentRuntime(runtime_config(server))
    try:
        writer = runtime.create_agent(name=f"writer-{tag}", include_thoughts=True, tools=[lookup])
        helper = runtime.create_agent(name=f"helper-{tag}")
        assert writer.chat(f'hello, "world" {tag}').text(timeout=10)
        tool_turn = writer.chat(
            f'@@thought pondering the city\n@@call lookup {{"city": "Paris"}}\nfacts {tag}'
        )
        tool_turn.text(timeout=10)
        long_turn = writer.chat(f"@@fault hang_after 2\none two three four five {tag}")
        for event in long_turn.events(timeout=10):
            if isinstance(event, TextDelta):
                long_turn.cancel()
                break
        with pytest.raises(TurnCancelled):
            long_turn.text(timeout=10)
        server.push_faults("429 minute 0.2s", match=f"limited {tag}")
        assert writer.chat(f"limited {tag}").text(timeout=20) == f"Echo: limited {tag}"
        assert helper.chat(f"helper {tag}").text(timeout=10)
        yield Recorded(runtime, writer, helper, tag)
    finally:
        runtime.shutdown(10.0)


def test_history_frame_has_one_typed_row_per_message(recorded: Recorded) -> None:
    frame = history_frame(recorded.writer)
    history = recorded.writer.history()
    assert_schema(frame, HISTORY_DTYPES)
    assert len(frame) == len(history)
    assert list(frame["role"].cat.categories) == CATEGORIES["role"]
    assert list(frame["status"].cat.categories) == CATEGORIES["message_status"]
    assert (frame["agent"] == recorded.writer.name).all()
    assert frame["text"].tolist() == [m.text for m in history]
    assert frame["time"].tolist() == [pd.Timestamp(m.time) for m in history]

    users = frame[frame["role"] == "user"]
    assert users["total_tokens"].isna().all()
    assert users["model"].isna().all()
    models = frame[frame["role"] == "model"]
    assert models["total_tokens"].notna().all()

    (call_row,) = frame["tool_calls"].dropna().tolist()
    call = {"name": "lookup", "args": {"city": "Paris"}, "id": "call-1"}
    assert json.loads(call_row) == [call]
    (result_row,) = frame["tool_results"].dropna().tolist()
    assert json.loads(result_row)[0]["response"]["city"] == "Paris"
    assert "pondering the city" in frame["thoughts"].tolist()

    cancelled = frame[frame["status"] == "cancelled"]
    assert cancelled["role"].tolist() == ["model"]
    partial = cancelled["text"].iloc[0]
    assert partial.startswith("Echo:")
    assert len(partial) < len(f"Echo: one two three four five {recorded.tag}")


def test_usage_frame_sums_each_turns_calls(recorded: Recorded) -> None:
    frame = usage_frame(recorded.writer)
    ledger = recorded.writer.ledger()
    assert_schema(frame, USAGE_DTYPES)
    assert list(frame["status"].cat.categories) == CATEGORIES["call_status"]
    assert frame["turn"].tolist() == [1, 2, 3, 4]
    assert frame["calls"].tolist() == [1, 2, 1, 2]
    assert frame["rate_limited"].tolist() == [0, 0, 0, 1]
    assert frame["status"].tolist() == ["ok", "ok", "cancelled", "ok"]
    assert frame["finish_reason"].tolist()[:2] == ["STOP", "STOP"]
    assert frame["finish_reason"].isna().tolist() == [False, False, True, False]
    total = recorded.writer.total_usage()
    for name in TOKENS:
        assert frame[name].sum() == getattr(total, name)
    thoughts = [e.usage.thoughts_tokens for e in ledger if e.turn == 2]
    assert frame["thoughts_tokens"].iloc[1] == sum(thoughts) > 0
    assert frame["duration"].sum() == pytest.approx(sum(e.duration for e in ledger))
    assert frame["retry_wait"].iloc[3] > 0
    assert (frame["time_to_first_chunk"].iloc[[0, 1, 2]] > 0).all()
    rate_limited_turn = [e for e in ledger if e.turn == 4]
    assert frame["time_to_first_chunk"].iloc[3] > (rate_limited_turn[1].time_to_first_chunk or 0)


def test_ledger_frame_has_every_call_of_every_agent(recorded: Recorded) -> None:
    frame = ledger_frame(recorded.runtime)
    entries = recorded.runtime.ledger()
    assert_schema(frame, LEDGER_DTYPES)
    assert list(frame["status"].cat.categories) == CATEGORIES["call_status"]
    assert len(frame) == len(entries)
    assert set(frame["agent"]) == {recorded.writer.name, recorded.helper.name}
    writer = frame[frame["agent"] == recorded.writer.name]
    assert writer["status"].tolist() == ["ok", "ok", "ok", "cancelled", "rate-limited", "ok"]
    limited = writer[writer["status"] == "rate-limited"]
    assert limited["error"].notna().all()
    assert limited["time_to_first_chunk"].isna().all()
    assert writer["error"].isna().sum() == 5
    assert frame["started"].tolist() == [pd.Timestamp(e.started) for e in entries]
    assert (frame["duration"] >= 0).all()


def test_sources_can_be_plain_lists(recorded: Recorded) -> None:
    history = recorded.writer.history()
    from_list = history_frame(history, agent=recorded.writer.name)
    pd.testing.assert_frame_equal(from_list, history_frame(recorded.writer))
    assert history_frame(history)["agent"].isna().all()
    ledger = recorded.writer.ledger()
    pd.testing.assert_frame_equal(usage_frame(ledger), usage_frame(recorded.writer))
    pd.testing.assert_frame_equal(
        ledger_frame(recorded.runtime.ledger()), ledger_frame(recorded.runtime)
    )


def recorded_frames(recorded: Recorded) -> dict[FrameKind, pd.DataFrame]:
    return {
        "history": history_frame(recorded.writer),
        "usage": usage_frame(recorded.writer),
        "ledger": ledger_frame(recorded.runtime),
    }


@pytest.mark.parametrize("kind", ["history", "usage", "ledger"])
def test_parquet_round_trip_loses_nothing(
    recorded: Recorded, tmp_path: Path, kind: FrameKind
) -> None:
    frame = recorded_frames(recorded)[kind]
    frame.to_parquet(tmp_path / "frame.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "frame.parquet"), frame)
    pd.testing.assert_frame_equal(read_frame(tmp_path / "frame.parquet", kind), frame)


@pytest.mark.parametrize("kind", ["history", "usage", "ledger"])
def test_csv_round_trip_loses_nothing(recorded: Recorded, tmp_path: Path, kind: FrameKind) -> None:
    frame = recorded_frames(recorded)[kind]
    frame.to_csv(tmp_path / "frame.csv")
    pd.testing.assert_frame_equal(read_frame(tmp_path / "frame.csv", kind), frame)
    frame.to_csv(tmp_path / "no_index.csv", index=False)
    pd.testing.assert_frame_equal(read_frame(tmp_path / "no_index.csv", kind), frame)
    subset = frame.iloc[::2]
    subset.to_csv(tmp_path / "subset.csv")
    pd.testing.assert_frame_equal(read_frame(tmp_path / "subset.csv", kind), subset)


@pytest.mark.parametrize(
    ("kind", "frame", "dtypes"),
    [
        ("history", history_frame([]), HISTORY_DTYPES),
        ("usage", usage_frame([]), USAGE_DTYPES),
        ("ledger", ledger_frame([]), LEDGER_DTYPES),
    ],
)
def test_empty_inputs_give_empty_frames_with_the_same_schema(
    tmp_path: Path, kind: FrameKind, frame: pd.DataFrame, dtypes: dict[str, str]
) -> None:
    assert frame.empty
    assert_schema(frame, dtypes)
    pd.testing.assert_frame_equal(frame, empty_frame(kind))
    frame.to_csv(tmp_path / "empty.csv")
    pd.testing.assert_frame_equal(read_frame(tmp_path / "empty.csv", kind), frame)
    frame.to_parquet(tmp_path / "empty.parquet")
    pd.testing.assert_frame_equal(read_frame(tmp_path / "empty.parquet", kind), frame)


def test_read_frame_refuses_unknown_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        read_frame(tmp_path / "x.csv", "turns")  # type: ignore[arg-type]


awkward_text = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(',"\n\r\t;\\ ')),
    max_size=40,
)
maybe_text = st.one_of(st.none(), awkward_text.filter(bool))
times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
counts = st.integers(min_value=0, max_value=2**40)
usages = st.builds(Usage, counts, counts, counts, counts, counts, counts)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
ledger_entries = st.builds(
    LedgerEntry,
    agent=awkward_text.filter(bool),
    turn=st.integers(min_value=0, max_value=50),
    call=st.integers(min_value=0, max_value=5),
    model=awkward_text.filter(bool),
    started=times,
    usage=usages,
    time_to_first_chunk=st.one_of(st.none(), seconds),
    duration=seconds,
    finish_reason=maybe_text,
    status=st.sampled_from(CATEGORIES["call_status"]),
    retry_wait=seconds,
    error=maybe_text,
)
parts = st.one_of(
    st.builds(TextPart, awkward_text, st.booleans()),
    st.builds(
        FunctionCallPart,
        awkward_text,
        st.dictionaries(awkward_text, st.one_of(awkward_text, st.integers())),
        maybe_text,
    ),
    st.builds(FunctionResponsePart, awkward_text, st.fixed_dictionaries({"r": awkward_text})),
    st.builds(BlobPart, st.sampled_from(["image/png", "application/pdf"]), st.just(b"x")),
)
messages = st.builds(
    ConversationMessage,
    role=st.sampled_from(CATEGORIES["role"]),
    parts=st.lists(parts, max_size=4).map(tuple),
    turn=st.integers(min_value=0, max_value=50),
    time=times,
    status=st.sampled_from(CATEGORIES["message_status"]),
    usage=st.one_of(st.none(), usages),
    model=maybe_text,
    finish_reason=maybe_text,
)
round_trips = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_round_trips(frame: pd.DataFrame, kind: FrameKind) -> None:
    with tempfile.TemporaryDirectory() as folder:
        csv, parquet = Path(folder, "f.csv"), Path(folder, "f.parquet")
        frame.to_csv(csv)
        pd.testing.assert_frame_equal(read_frame(csv, kind), frame)
        frame.to_parquet(parquet)
        pd.testing.assert_frame_equal(read_frame(parquet, kind), frame)
        if len(frame):
            pd.testing.assert_frame_equal(pd.read_parquet(parquet), frame)


@round_trips
@given(st.lists(ledger_entries, max_size=8))
def test_generated_ledgers_round_trip(entries: list[LedgerEntry]) -> None:
    assert_round_trips(ledger_frame(entries), "ledger")
    assert_round_trips(usage_frame(entries), "usage")


@round_trips
@given(st.lists(messages, max_size=8), maybe_text)
def test_generated_histories_round_trip(history: list[ConversationMessage], agent: str) -> None:
    frame = history_frame(history, agent=agent)
    assert frame["text"].tolist() == [m.text for m in history]
    assert frame["thoughts"].tolist() == [m.thoughts for m in history]
    assert_round_trips(frame, "history")


@settings(max_examples=60, deadline=None)
@given(st.lists(ledger_entries, max_size=12))
def test_usage_frame_matches_a_per_turn_sum(entries: list[LedgerEntry]) -> None:
    frame = usage_frame(entries)
    turns: dict[tuple[str, int], list[LedgerEntry]] = {}
    for entry in entries:
        turns.setdefault((entry.agent, entry.turn), []).append(entry)
    assert list(zip(frame["agent"], frame["turn"], strict=True)) == sorted(turns)
    for row, key in zip(frame.itertuples(), sorted(turns), strict=True):
        calls = turns[key]
        assert row.calls == len(calls)
        assert row.total_tokens == sum(e.usage.total_tokens for e in calls)
        assert row.status == calls[-1].status
        assert row.started == pd.Timestamp(calls[0].started)
        assert row.rate_limited == sum(e.status == "rate-limited" for e in calls)


def test_a_hundred_thousand_ledger_rows_build_column_wise() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    entries = [
        LedgerEntry(
            agent=f"agent-{i % 10}",
            turn=i // 20,
            call=i % 2,
            model="gemini-2.5-flash",
            started=start + timedelta(microseconds=i),
            usage=Usage(prompt_tokens=i, candidates_tokens=2, total_tokens=i + 2),
            time_to_first_chunk=None if i % 7 == 0 else 0.01,
            duration=0.5,
            finish_reason="STOP",
            status="rate-limited" if i % 11 == 0 else "ok",
        )
        for i in range(100_000)
    ]
    ledger = ledger_frame(entries)
    assert len(ledger) == 100_000
    assert ledger["started"].iloc[-1] == pd.Timestamp(start + timedelta(microseconds=99_999))
    usage = usage_frame(entries)
    assert usage["calls"].sum() == 100_000
    assert usage["total_tokens"].sum() == sum(i + 2 for i in range(100_000))


def test_importing_the_package_does_not_import_pandas() -> None:
    code = "import sys, agentrt_jupyter; assert 'pandas' not in sys.modules, 'pandas loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", ["history", "usage", "ledger"])
def test_a_compact_frame_is_the_full_frame_shown_short(recorded: Recorded, kind: FrameKind) -> None:
    full = recorded_frames(recorded)[kind]
    shown = compact(full, kind)
    pd.testing.assert_frame_equal(pd.DataFrame(shown), full)  # every column, every dtype
    view = shown.view()
    assert list(view.columns) == [c for c in COMPACT_COLUMNS[kind] if c in full.columns]
    assert len(view.columns) < len(full.columns)
    for name in view.columns:
        if isinstance(full[name].dtype, pd.DatetimeTZDtype):
            local = full[name].dt.tz_convert(datetime.now().astimezone().tzinfo)
            assert view[name].tolist() == local.dt.strftime("%Y-%m-%d %H:%M:%S").tolist()
    text = [v for v in view.get("text", pd.Series(dtype="string")).dropna()]
    assert all(len(v) <= 60 and "\n" not in v for v in text)
    html = shown._repr_html_()
    assert "white-space: nowrap" in html and "more columns in the frame" in html
    assert type(shown[["turn"]]) is pd.DataFrame  # operations give plain frames


def test_a_compact_frame_shows_missing_numbers_blank_and_counts_in_words() -> None:
    frame = pd.DataFrame({"agent": ["live", "stored"], "turns": pd.array([3, None], dtype="Int64")})
    shown = compact(frame, "usage")
    shown.compact_columns = ("agent", "turns")
    html, text = shown._repr_html_(), repr(shown)
    assert "<NA>" not in html and "<NA>" not in text and "NaN" not in text
    assert "2 rows</sub>" in html and "more column" not in html  # nothing hidden
    one = compact(frame.head(1), "usage")
    one.compact_columns = ("agent",)
    assert "1 row; 1 more column in the frame" in one._repr_html_()
    assert str(pd.DataFrame(shown)["turns"].dtype) == "Int64"  # the frame keeps its dtype
