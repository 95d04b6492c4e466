"""`agg` (issue 20 item 6): one answer per group, long groups folded map-then-reduce with
the fold in the summary; `dedupe` (item 7): candidates by embeddings, model checks,
transitive closure."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, BackendError, FakeBackend
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.batch.dedupe import UnionFind
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with
from .operator_helpers import fake_runtime, prompt_of

pytestmark = pytest.mark.timeout(60)
RECORDS = re.compile(r"First: (.*)\nSecond: (.*)\n")
COUNTS = re.compile(r"rows: (\d+)")


def counting_judge(request: ModelRequest) -> str:
    """Counts what it was shown: rows ("- ..." lines) or the counts of combined answers,
    so the final answer of a fold is the group's row count however it was folded; and
    says two records are the same when their first word (lower case) is."""
    text = prompt_of(request)
    pair = RECORDS.search(text)
    if pair:
        first, second = (side.split()[0].strip(",").lower() for side in pair.groups())
        return json.dumps({"same": first == second})
    if "combine these" in text:
        return f"rows: {sum(int(n) for n in COUNTS.findall(text))}"
    return f"rows: {text.count(chr(10) + '- ')}"


@pytest.fixture
def judged() -> Iterator[tuple[AgentRuntime, FakeBackend]]:
    with fake_runtime(counting_judge) as made:
        yield made


def reviews() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "region": ["north"] * 40 + ["south"] * 3,
            "review": [f"late parcel number {n} " + "words " * 8 for n in range(43)],
        }
    )


def test_agg_answers_each_group_and_folds_the_long_one(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged

    result = runtime.agg(
        reviews(), "Count the rows", by="region", on="{review}", context_chars=150, progress=False
    )

    assert list(result.index) == ["north", "south"] and result.index.name == "region"
    assert list(result["reply"]) == ["rows: 40", "rows: 3"]
    assert list(result["rows"]) == [40, 3]
    fold = result.attrs["agentrt"].details["fold"]
    assert fold["south"] == [2, 1]  # three rows past 150 characters: two parts, one combine
    assert len(fold["north"]) >= 3 and fold["north"][-1] == 1
    assert list(result["levels"]) == [len(fold["north"]), 2]
    assert sum(result["calls"]) == len(fake.requests) == sum(sum(f) for f in fold.values())


def test_agg_without_by_is_one_group_showing_every_column(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged

    result = runtime.agg(reviews().head(3), "Count the rows", progress=False)

    assert list(result["reply"]) == ["rows: 3"] and len(fake.requests) == 1
    assert "region: north; review: late parcel number 0" in prompt_of(fake.requests[0])


def test_agg_explain_prices_the_first_level_and_sends_nothing(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged

    plan = runtime.agg(
        reviews(), "Count", by="region", on="{review}", context_chars=400, explain=True
    )

    assert plan.calls > 2 and fake.requests == []


def test_a_second_agg_replays_every_part_and_sends_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = reviews().assign(review=lambda f: f["review"] + tag)

    first = rt.agg(
        frame, "Summarise", by="region", on="{review}", context_chars=400, progress=False
    )
    sent = len(requests_with(server, tag))
    again = rt.agg(
        frame, "Summarise", by="region", on="{review}", context_chars=400, progress=False
    )

    assert list(again["reply"]) == list(first["reply"])
    assert sent == first.attrs["agentrt"].calls > 2
    assert len(requests_with(server, tag)) == sent and again.attrs["agentrt"].calls == 0


def test_union_find_closes_pairs_transitively() -> None:
    sets = UnionFind(6)
    sets.union(4, 2)
    sets.union(2, 0)
    sets.union(5, 3)

    assert sets.labels() == [0, 1, 0, 2, 0, 2]


def test_dedupe_clusters_the_same_entity_across_wordings(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged
    frame = pd.DataFrame(
        {
            "name": ["Acme Inc", "Bolt Ltd", "ACME", "Crux", "Acme Inc", "bolt"],
            "address": [
                "1 Main St",
                "2 Side Rd",
                "1 Main Street",
                "9 High St",
                "1 Main St",
                "2 Side Road",
            ],
        },
        index=list("abcdef"),
    )

    clusters = runtime.dedupe(frame, "{name}, {address}", candidates=2, progress=False)

    assert list(clusters.index) == list("abcdef") and clusters.name == "cluster"
    assert list(clusters) == [0, 1, 0, 2, 0, 1]
    summary = clusters.attrs["agentrt"]
    assert summary.details["clusters"] == 3
    assert len(fake.requests) == summary.details["pairs_checked"] <= 5 * 2
    assert fake.embedded == [["Acme Inc, 1 Main St", "Bolt Ltd, 2 Side Rd", "ACME, 1 Main Street",
                              "Crux, 9 High St", "bolt, 2 Side Road"]]  # fmt: skip


def test_a_second_dedupe_sends_nothing(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    frame = pd.DataFrame({"name": [f"{tag} shop {n}" for n in range(5)]})
    template = '{name}\n@@reply {{"same": false}}'

    first = rt.dedupe(frame, template, candidates=2, progress=False)
    sent = len(requests_with(server, tag))
    again = rt.dedupe(frame, template, candidates=2, progress=False)

    assert list(first) == list(again) == [0, 1, 2, 3, 4]
    assert sent > 1 and len(requests_with(server, tag)) == sent


EMPTY = pd.DataFrame({"text": pd.Series([], dtype=object)})


@pytest.mark.parametrize(
    "call",
    [
        lambda rt: rt.embed(EMPTY, "{text}"),
        lambda rt: rt.topk(EMPTY, "best", k=3, by="{text}"),
        lambda rt: rt.join(EMPTY, EMPTY, "{left.text} is {right.text}"),
        lambda rt: rt.search(EMPTY, "query", on="{text}"),
        lambda rt: rt.agg(EMPTY, "Summarise"),
        lambda rt: rt.dedupe(EMPTY, "{text}"),
    ],
    ids=["embed", "topk", "join", "search", "agg", "dedupe"],
)
def test_an_empty_frame_gives_an_empty_result_and_asks_nothing(
    judged: tuple[AgentRuntime, FakeBackend], call: Any
) -> None:
    runtime, fake = judged

    assert len(call(runtime)) == 0
    assert fake.requests == [] and fake.embedded == []


def test_a_part_that_fails_is_left_out_of_the_fold_and_said_in_error() -> None:
    def judge(request: ModelRequest) -> str:
        text = prompt_of(request)
        if "late parcel number 7 " in text and "combine these" not in text:
            raise BackendError("400 INVALID_ARGUMENT: this part is refused", code=400)
        return counting_judge(request)

    with fake_runtime(judge) as (runtime, _):
        result = runtime.agg(
            reviews().head(20), "Count", on="{review}", context_chars=150, progress=False
        )

    (reply,) = result["reply"]
    (error,) = result["error"]
    assert reply.startswith("rows: ") and int(reply.split()[-1]) < 20
    assert error.startswith("1 of ") and "failed at level 1: " in error and "refused" in error
