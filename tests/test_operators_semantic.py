"""filter, classify and extract over frames, against the local server's scripted engine.

Each row's reply is scripted in the row itself (`@@reply {...}` on a line of its own);
rows are told apart in the server's log by the test's tag and a `[row N]` marker.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import BaseModel

from agentrt_jupyter import AgentRuntime, InvalidConfig
from agentrt_jupyter.batch import cancel_maps
from agentrt_jupyter.batch.explain import OperatorPlan
from agentrt_jupyter.batch.semantic import OperatorSummary
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config
from .killed_kernel import kill_9_midway

pytestmark = pytest.mark.timeout(60)


def scripted(tag: str, replies: list[Any], *, extra: str = "") -> pd.DataFrame:
    """One row per reply (a JSON value, or None for the engine's echo), indexed r0, r1, ..."""
    texts = []
    for n, reply in enumerate(replies):
        script = "" if reply is None else f"\n@@reply {json.dumps(reply)}"
        texts.append(f"{tag} [row {n}] review text{extra}{script}")
    return pd.DataFrame(
        {"review": texts, "n": range(len(replies))}, index=[f"r{i}" for i in range(len(replies))]
    )


def rows_sent(server: LocalServer, tag: str, since: int = 0) -> list[int]:
    sent = [
        r
        for r in requests_with(server, tag)
        if r["id"] > since and r["kind"] in ("stream", "generate")
    ]
    return sorted(int(json.dumps(r["body"]).split("[row ", 1)[1].split("]", 1)[0]) for r in sent)


def last_id(server: LocalServer) -> int:
    logged = server.requests()
    return logged[-1]["id"] if logged else 0


def test_filter_keeps_the_matching_rows_and_lists_the_rows_without_an_answer(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = scripted(tag, [{"match": True}, {"match": False}, {"match": True}, "not json"])

    kept = rt.filter(frame, "Complains about delivery: {review}")

    assert list(kept.index) == ["r0", "r2"]
    assert list(kept.columns) == ["review", "n"]  # the input's rows, unchanged
    summary = kept.attrs["agentrt"]
    assert isinstance(summary, OperatorSummary)
    assert [(label, status) for label, status, _ in summary.unanswered] == [("r3", "error")]
    assert "does not match the schema" in summary.unanswered[0][2]
    assert summary.progress.ok == 3 and summary.escalation is None
    sent = requests_with(server, tag)
    assert len(sent) == 4
    body = sent[0]["body"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert "Does the following hold?" in json.dumps(body["contents"])


def test_filter_mask_is_a_boolean_series_aligned_with_the_input(rt: AgentRuntime, tag: str) -> None:
    frame = scripted(tag, [{"match": False}, {"match": True}, "oops"])

    mask = rt.filter(frame, "{review}", mask=True)

    assert mask.dtype == bool and mask.name == "match"
    assert mask.to_dict() == {"r0": False, "r1": True, "r2": False}
    assert [label for label, _, _ in mask.attrs["agentrt"].unanswered] == ["r2"]


def test_classify_gives_exactly_the_labels_and_an_answer_outside_them_is_an_error(
    rt: AgentRuntime, tag: str
) -> None:
    frame = scripted(tag, [{"label": "praise"}, {"label": "complaint"}, {"label": "spam"}])

    labels = rt.classify(frame, "{review}", labels=["praise", "complaint", "question"])

    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.dtype.categories) == ["praise", "complaint", "question"]
    assert labels.name == "label" and list(labels.index) == ["r0", "r1", "r2"]
    assert labels["r0"] == "praise" and labels["r1"] == "complaint"
    assert pd.isna(labels["r2"])
    ((label, status, error),) = labels.attrs["agentrt"].unanswered
    assert (label, status) == ("r2", "error") and "spam" in error


class Mood(enum.Enum):
    HAPPY = "happy"
    ANGRY = "angry"


def test_classify_takes_an_enum_of_labels(rt: AgentRuntime, tag: str) -> None:
    frame = scripted(tag, [{"label": "angry"}, {"label": "happy"}])
    labels = rt.classify(frame, "{review}", labels=Mood)
    assert list(labels.dtype.categories) == ["happy", "angry"]
    assert list(labels) == ["angry", "happy"]


@pytest.mark.parametrize(
    ("labels", "problem"),
    [([], "at least one"), (["a", "a"], "distinct"), ("abc", "list of label"), ([1, 2], "strings")],
)
def test_classify_refuses_labels_it_cannot_use(
    rt: AgentRuntime, tag: str, labels: Any, problem: str
) -> None:
    with pytest.raises(InvalidConfig, match=problem):
        rt.classify(scripted(tag, [None]), "{review}", labels=labels)


class Order(BaseModel):
    product: str
    quantity: int
    urgent: bool


def test_extract_gives_one_typed_column_per_field(rt: AgentRuntime, tag: str) -> None:
    frame = scripted(
        tag,
        [
            {"product": "kettle", "quantity": 2, "urgent": True},
            {"product": "lamp", "quantity": "many", "urgent": False},
        ],
    )

    columns = rt.extract(frame, "{review}", schema=Order)

    assert list(columns.columns) == ["product", "quantity", "urgent"]
    assert columns.dtypes.astype(str).to_dict() == {
        "product": "string",
        "quantity": "Int64",
        "urgent": "boolean",
    }
    assert columns.loc["r0"].tolist() == ["kettle", 2, True]
    assert columns.loc["r1"].isna().all()
    assert [label for label, _, _ in columns.attrs["agentrt"].unanswered] == ["r1"]


def test_operators_refuse_a_schema_of_the_caller_s_own(rt: AgentRuntime, tag: str) -> None:
    with pytest.raises(InvalidConfig, match="schema"):
        rt.filter(scripted(tag, [None]), "{review}", schema=Order)
    with pytest.raises(InvalidConfig, match="schema=Model"):
        rt.extract(scripted(tag, [None]), "{review}")
    with pytest.raises(InvalidConfig, match="no column 'reveiw'"):
        rt.filter(scripted(tag, [None]), "{reveiw}")


def test_a_second_run_replays_every_row_and_sends_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = scripted(tag, [{"match": True}, {"match": False}, {"match": True}])
    first = rt.filter(frame, "{review}")
    sent = len(requests_with(server, tag))

    again = rt.filter(frame, "{review}")

    assert list(again.index) == list(first.index) == ["r0", "r2"]
    assert again.attrs["agentrt"].progress.cached == 3
    assert len(requests_with(server, tag)) == sent == 3


def test_the_budget_stops_a_filter_and_the_rows_left_are_listed_not_kept(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = scripted(tag, [{"match": True}] * 8)

    kept = rt.filter(frame, "{review}", budget_tokens=80, concurrency=1, max_concurrency=1)

    summary = kept.attrs["agentrt"]
    answered = len(kept)
    assert 1 <= answered < 8
    assert summary.progress.tokens_in + summary.progress.tokens_out <= 80
    assert {status for _, status, _ in summary.unanswered} == {"skipped"}
    assert len(summary.unanswered) == 8 - answered
    assert len(requests_with(server, tag)) == answered


def test_a_cancelled_filter_keeps_the_finished_rows_for_the_rerun(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = scripted(tag, [{"match": True}, {"match": True}, {"match": True}])
    frame.loc["r2", "review"] += "\n@@fault hang"
    results: list[pd.DataFrame] = []
    runner = threading.Thread(target=lambda: results.append(rt.filter(frame, "{review}")))
    runner.start()
    for row in (0, 1):
        server.wait_for_request(server.wait_for_tagged(f"{tag} [row {row}]", 30)["id"], 30)
    server.wait_for_tagged(f"{tag} [row 2]", timeout=30)

    assert cancel_maps(rt) == 1
    runner.join(30)

    (kept,) = results
    assert list(kept.index) == ["r0", "r1"]
    summary = kept.attrs["agentrt"]
    assert summary.progress.state == "cancelled"
    assert [(label, status) for label, status, _ in summary.unanswered] == [("r2", "cancelled")]
    since = last_id(server)
    frame.loc["r2", "review"] = frame.loc["r2", "review"].replace("\n@@fault hang", "")
    again = rt.filter(frame, "{review}")
    assert list(again.index) == ["r0", "r1", "r2"]
    assert rows_sent(server, tag, since) == [2]


KILLED_FILTER = """
import sys
import pandas as pd
from agentrt_jupyter import AgentRuntime, RuntimeConfig
url, token, store, tag = sys.argv[1:]
rt = AgentRuntime(RuntimeConfig(base_url=url, api_key=token, api_version="v1beta",
                                store_path=store))
frame = pd.DataFrame({"n": range(30)})
rt.filter(frame, "@@delay 40\\n" + tag + ' [row {n}] x\\n@@reply {{"match": true}}',
          concurrency=3, max_concurrency=3, progress=False)
print("finished before the kill")
"""


def test_after_kill_9_a_filter_rerun_asks_only_the_missing_rows(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    def nine_answered() -> None:
        while len([r for r in requests_with(server, tag) if r["outcome"] == "complete"]) < 9:
            server.wait_for_request(last_id(server) + 1, timeout=30)

    kill_9_midway(
        KILLED_FILTER, server.url, server.token, str(store_path), tag, until=nine_answered
    )
    with sqlite3.connect(store_path) as db:
        kept = db.execute("SELECT count(*) FROM map_rows").fetchone()[0]
    assert 6 <= kept < 30
    since = last_id(server)

    runtime = AgentRuntime(runtime_config(server, store_path=store_path))
    try:
        template = "@@delay 40\n" + tag + ' [row {n}] x\n@@reply {{"match": true}}'
        result = runtime.filter(pd.DataFrame({"n": range(30)}), template, progress=False)
    finally:
        runtime.shutdown(10.0)

    assert len(result) == 30
    assert result.attrs["agentrt"].progress.cached == kept
    assert len(rows_sent(server, tag, since)) == 30 - kept


def test_explain_prices_a_filter_without_any_request(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = scripted(tag, [{"match": True}] * 5)

    plan = rt.filter(frame, "{review}", explain=True)

    assert isinstance(plan, OperatorPlan) and plan.operator == "filter"
    assert (plan.calls, plan.cached_calls, plan.tokens_out) == (5, 0, 5 * 8)
    assert rt.classify(frame, "{review}", labels=["a", "b"], dry_run=True).calls == 5
    assert rt.extract(frame, "{review}", schema=Order, explain=True).calls == 5
    assert requests_with(server, tag) == []


def test_a_cascade_sends_the_unsure_rows_to_the_strong_model(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = scripted(
        tag,
        [
            {"match": True, "confidence": 0.95},
            {"match": False, "confidence": 0.3},
            {"match": True, "confidence": 0.9},
            {"match": True},  # no confidence: not in the form asked
        ],
    )

    plan = rt.filter(
        frame, "{review}", model="gemini-2.5-flash-lite", escalate_to="gemini-2.5-pro", explain=True
    )
    assert [step.name for step in plan.steps] == ["ask cheap model", "escalate"]
    assert [step.model for step in plan.steps] == ["gemini-2.5-flash-lite", "gemini-2.5-pro"]
    assert requests_with(server, tag) == []

    kept = rt.filter(
        frame,
        "{review}",
        model="gemini-2.5-flash-lite",
        escalate_to="gemini-2.5-pro",
        threshold=0.8,
    )

    by_model: dict[str, list[int]] = {}
    for request in requests_with(server, tag):
        row = int(json.dumps(request["body"]).split("[row ", 1)[1].split("]", 1)[0])
        by_model.setdefault(request["model"], []).append(row)
    assert sorted(by_model["gemini-2.5-flash-lite"]) == [0, 1, 2, 3]
    assert sorted(by_model["gemini-2.5-pro"]) == [1, 3]
    # r3's cheap reply lacked the confidence asked for: the strong model's answer counts
    assert list(kept.index) == ["r0", "r2", "r3"]
    up = kept.attrs["agentrt"].escalation
    assert (up.rows, up.share, up.threshold) == (2, 0.5, 0.8)
    assert up.usd is not None and up.saving is not None and up.saving > 0
    assert up.usd + up.saving == pytest.approx(up.usd_strong_only)


def test_the_accessor_and_the_aio_twin_run_the_operators(rt: AgentRuntime, tag: str) -> None:
    frame = scripted(tag, [{"match": True}, {"match": False}])

    assert list(frame.agentrt.filter("{review}", runtime=rt).index) == ["r0"]
    mask = asyncio.run(rt.aio.filter(frame, "{review}", mask=True))
    assert list(mask) == [True, False]
    labels = asyncio.run(frame.agentrt.aclassify("{review}", labels=["x"], runtime=rt))
    assert labels.isna().all()  # the replies are filter answers, not labels


def test_filter_runs_on_the_batch_api_too(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    frame = scripted(tag, [{"match": True}, {"match": False}])

    kept = rt.filter(frame, "{review}", mode="batch", progress=False)

    assert list(kept.index) == ["r0"]
    assert kept.attrs["agentrt"].progress.mode == "batch"


def test_an_extract_cascade_merges_the_strong_model_s_typed_values(
    rt: AgentRuntime, tag: str
) -> None:
    frame = scripted(
        tag,
        [
            {"product": "kettle", "quantity": 2, "urgent": True, "confidence": 0.9},
            {"product": "lamp", "quantity": 1, "urgent": False},  # no confidence: escalated
        ],
    )

    columns = rt.extract(
        frame, "{review}", schema=Order, model="gemini-2.5-flash-lite", escalate_to="gemini-2.5-pro"
    )

    assert list(columns.columns) == ["product", "quantity", "urgent"]
    assert columns.dtypes.astype(str).tolist() == ["string", "Int64", "boolean"]
    assert columns.loc["r1"].tolist() == ["lamp", 1, False]
    assert columns.attrs["agentrt"].escalation.rows == 1
