"""`join`, `sim_join`, `search` (issue 20 item 5): embeddings propose candidates, the model
decides; the candidates knob bounds the calls; a rerun replays everything."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, FakeBackend, InvalidConfig, OperatorStopped
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config
from .operator_helpers import fake_runtime, prompt_of

pytestmark = pytest.mark.timeout(60)
STATEMENT = re.compile(r"hold\? (.*) is the same item as (.*)\n")
TEMPLATE = "{left.product} is the same item as {right.name}"


def same_model_number(request: ModelRequest) -> str:
    """A judge: the same item when both end in the same model number."""
    first, second = STATEMENT.search(prompt_of(request)).groups()
    return json.dumps({"match": first.split()[-1] == second.split()[-1]})


@pytest.fixture
def judged() -> Iterator[tuple[AgentRuntime, FakeBackend]]:
    with fake_runtime(same_model_number) as made:
        yield made


def catalogues(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Left "blue widget model N", right the same items worded otherwise, in reverse."""
    left = pd.DataFrame({"product": [f"blue widget model {i}" for i in range(n)]})
    right = pd.DataFrame(
        {"name": [f"widget, blue, model {i}" for i in reversed(range(n))]},
        index=[f"r{i}" for i in reversed(range(n))],
    )
    return left, right


def test_join_finds_every_match_asking_only_about_the_candidates(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged
    left, right = catalogues(30)

    pairs = runtime.join(left, right, TEMPLATE, candidates=2, progress=False)

    assert sorted(zip(pairs["left_index"], pairs["right_index"], strict=True)) == sorted(
        (i, f"r{i}") for i in range(30)
    )
    assert list(pairs.columns) == ["left_index", "right_index", "product", "name", "similarity"]
    summary = pairs.attrs["agentrt"]
    assert len(fake.requests) == summary.calls == 60 == summary.details["pairs_checked"]
    assert summary.details["all_pairs"] == 900 and summary.embedded == 60


def test_join_without_blocking_asks_about_every_pair(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged
    left, right = catalogues(5)

    pairs = runtime.join(left, right, TEMPLATE, candidates=None, progress=False)

    assert len(pairs) == 5 and len(fake.requests) == 25 and fake.embedded == []


def test_join_explain_counts_the_candidate_pairs_and_sends_nothing(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged
    left, right = catalogues(40)

    plan = runtime.join(left, right, TEMPLATE, candidates=3, explain=True)

    assert plan.calls + plan.cached_calls == 120
    assert fake.requests == [] and fake.embedded == []


def test_a_template_must_name_each_sides_columns(judged: tuple[AgentRuntime, FakeBackend]) -> None:
    runtime, _ = judged
    left, right = catalogues(2)

    with pytest.raises(InvalidConfig, match="left frame has no column 'name'"):
        runtime.join(left, right, "{left.name} is {right.name}")
    with pytest.raises(InvalidConfig, match="with its side"):
        runtime.join(left, right, "{product} is {right.name}")


def test_a_second_join_replays_embeddings_and_answers_and_sends_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    left = pd.DataFrame({"product": [f"{tag} apple {i}" for i in range(6)]})
    right = pd.DataFrame({"name": [f"{tag} apple {i} item" for i in range(6)]})
    template = TEMPLATE + '\n@@reply {{"match": true}}'  # braces doubled, as map's

    first = rt.join(left, right, template, candidates=2, progress=False)
    sent = len(requests_with(server, tag))
    again = rt.join(left, right, template, candidates=2, progress=False)

    assert len(first) == len(again) == 12
    assert sent == 2 + 12  # two embedding calls, twelve yes/no
    assert len(requests_with(server, tag)) == sent
    assert again.attrs["agentrt"].calls == 0 and again.attrs["agentrt"].embed_calls == 0


def test_sim_join_pairs_each_left_row_with_its_nearest_right_rows(
    rt: AgentRuntime, tag: str
) -> None:
    left = pd.DataFrame({"product": ["red apple pie", "tax return form"]})
    right = pd.DataFrame({"name": ["tax form return", "apple pie red", "blue car"]})

    pairs = rt.sim_join(left, right, left_on="{product}", right_on="{name}", k=1)

    assert list(zip(pairs["left_index"], pairs["right_index"], strict=True)) == [(0, 1), (1, 0)]
    assert (pairs["similarity"] > 0.99).all()


def test_search_returns_the_nearest_rows_first(rt: AgentRuntime) -> None:
    frame = pd.DataFrame({"text": ["blue car fast", "red apple pie", "apple tart red", "tax"]})

    found = rt.search(frame, "red apple", on="{text}", k=2)

    assert sorted(found.index) == [1, 2] and found["similarity"].is_monotonic_decreasing
    assert found.attrs["agentrt"].embedded == 5


def test_a_round_whose_every_row_fails_stops_the_operator(rt: AgentRuntime, tag: str) -> None:
    left = pd.DataFrame({"product": [f"{tag} pear {i}" for i in range(3)]})
    right = pd.DataFrame({"name": [f"{tag} pear {i}" for i in range(3)]})
    not_json = TEMPLATE + "\n@@reply certainly not JSON"

    with pytest.raises(OperatorStopped, match="every row of its match round failed"):
        rt.join(left, right, not_json, candidates=1, progress=False)


def test_a_join_in_batch_mode_sends_its_pairs_as_one_batch_job() -> None:
    with LocalServer.start("scripted") as own:
        own.set_batch_delay(0.1)
        with AgentRuntime(runtime_config(own)) as runtime:
            left = pd.DataFrame({"product": [f"apple {i}" for i in range(4)]})
            right = pd.DataFrame({"name": [f"apple {i} item" for i in range(4)]})
            template = TEMPLATE + '\n@@reply {{"match": true}}'
            pairs = runtime.join(left, right, template, candidates=1, mode="batch", progress=False)
        kinds = [r["kind"] for r in own.requests()]

    assert len(pairs) == 4 and pairs.attrs["agentrt"].calls == 4
    assert kinds.count("batch_create") == 1 and "generate" not in kinds and "stream" not in kinds
