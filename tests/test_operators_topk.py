"""`topk` (issue 20 item 4): the k best rows in order by a tournament of model comparisons,
calls bounded; cache replay, budget and cancel against the local server."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, FakeBackend, OperatorStopped
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.batch import BatchProgress, cancel_maps, explain
from agentrt_jupyter.batch.explain import OperatorPlan
from agentrt_jupyter.batch.topk import FIELD, default_max_calls, topk_rounds
from agentrt_jupyter.errors import CostNotApproved
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config, wait_for_tagged
from .killed_kernel import kill_9_midway
from .operator_helpers import fake_runtime, prompt_of

pytestmark = pytest.mark.timeout(60)
ITEMS = re.compile(r"First item:\n(.*)\n\nSecond item:\n(.*)$", re.S)


def larger_number_wins(request: ModelRequest) -> str:
    """A judge that prefers the item with the larger number in it."""
    first, second = (int(item.split()[-1]) for item in ITEMS.search(prompt_of(request)).groups())
    return json.dumps({"first_is_better": first > second})


@pytest.fixture
def judged() -> Iterator[tuple[AgentRuntime, FakeBackend]]:
    with fake_runtime(larger_number_wins) as made:
        yield made


def shuffled_urgencies(n: int) -> pd.DataFrame:
    values = list(range(n))
    random.Random(7).shuffle(values)
    return pd.DataFrame(
        {"text": [f"ticket urgency {v}" for v in values]}, index=[f"t{v}" for v in values]
    )


def test_topk_returns_the_k_best_rows_best_first_within_its_bound(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged
    frame = shuffled_urgencies(64)

    top = runtime.topk(frame, "most urgent", k=5, by="{text}", progress=False)

    assert list(top.index) == ["t63", "t62", "t61", "t60", "t59"]
    summary = top.attrs["agentrt"]
    assert summary.calls == len(fake.requests) <= default_max_calls(64, 5)
    assert summary.calls < 64 * 6 / 2  # well under a comparison sort's n log2 n
    prompts = [prompt_of(r) for r in fake.requests]
    assert len(set(prompts)) == len(prompts), "a pair was asked twice"


def test_topk_with_k_past_the_rows_orders_them_all(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, _ = judged
    frame = shuffled_urgencies(6)

    top = runtime.topk(frame, "most urgent", k=10, by="{text}", progress=False)

    assert list(top.index) == ["t5", "t4", "t3", "t2", "t1", "t0"]


def test_max_calls_stops_topk_before_it_would_pass_it(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged

    with pytest.raises(OperatorStopped, match="max_calls=10"):
        runtime.topk(shuffled_urgencies(32), "most urgent", k=3, by="{text}", max_calls=10)

    assert len(fake.requests) == 0  # the first round alone (16 pairs) would pass it


def test_topk_explain_prices_the_comparisons_and_sends_nothing(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, fake = judged

    plan = runtime.topk(shuffled_urgencies(100), "most urgent", k=10, by="{text}", explain=True)

    assert plan.operator == "topk" and plan.calls == 99 + 9 * 7
    assert fake.requests == []


def constant_criterion(tag: str) -> str:
    """A criterion the scripted engine answers "the first is better" to, every time."""
    return f'most urgent {tag}\n@@reply {{"first_is_better": true}}'


def test_a_second_topk_replays_every_comparison_and_sends_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = pd.DataFrame({"text": [f"row {n}" for n in range(8)]})

    first = rt.topk(frame, constant_criterion(tag), k=3, by="{text}", progress=False)
    sent = len(requests_with(server, tag))
    again = rt.topk(frame, constant_criterion(tag), k=3, by="{text}", progress=False)

    assert list(first.index) == list(again.index) == [0, 1, 2]
    assert sent == first.attrs["agentrt"].calls > 0
    assert len(requests_with(server, tag)) == sent
    assert (again.attrs["agentrt"].calls, again.attrs["agentrt"].cached) == (0, sent)


def test_a_budget_stops_topk_and_the_rerun_sends_only_the_rest(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = pd.DataFrame({"text": [f"row {n}" for n in range(8)]})

    with pytest.raises(OperatorStopped, match="budget_tokens"):
        rt.topk(frame, constant_criterion(tag), k=2, by="{text}", budget_tokens=200, progress=False)
    before = len(requests_with(server, tag))
    done = rt.topk(frame, constant_criterion(tag), k=2, by="{text}", progress=False)

    summary = done.attrs["agentrt"]
    assert 0 < before < summary.calls + summary.cached
    assert summary.cached == before
    assert len(requests_with(server, tag)) == before + summary.calls


def test_cancelling_topk_stops_its_round_and_keeps_what_was_answered(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = pd.DataFrame({"text": [f"row {n}" for n in range(4)]})
    slow = f"{constant_criterion(tag)}\n@@delay 20000"
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            rt.topk(frame, slow, k=1, by="{text}", progress=False)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for_tagged(server, tag)
    assert cancel_maps(rt) == 1
    worker.join(30)

    assert not worker.is_alive()
    (error,) = outcome
    assert isinstance(error, OperatorStopped) and "compare round" in str(error)
    assert error.progress.cancelled == 2


class CountingGate:
    """A cost gate that approves or refuses every plan, and counts the questions."""

    threshold = 0.0

    def __init__(self, approve: bool) -> None:
        self.approve = approve
        self.plans: list[OperatorPlan] = []

    def ask(self, plan: OperatorPlan) -> bool:
        self.plans.append(plan)
        return self.approve

    async def aask(self, plan: OperatorPlan) -> bool:
        return self.ask(plan)


def test_a_costly_topk_asks_once_for_all_its_rounds(
    judged: tuple[AgentRuntime, FakeBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, _ = judged
    gate = CountingGate(approve=True)
    monkeypatch.setattr(explain, "_gate_finder", lambda: gate)

    top = runtime.topk(shuffled_urgencies(16), "most urgent", k=3, by="{text}", progress=False)

    assert top.attrs["agentrt"].rounds > 1
    (plan,) = gate.plans
    assert plan.operator == "topk" and plan.calls == 15 + 2 * 4


def test_a_refused_topk_sends_nothing(
    judged: tuple[AgentRuntime, FakeBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, fake = judged
    monkeypatch.setattr(explain, "_gate_finder", lambda: CountingGate(approve=False))

    with pytest.raises(CostNotApproved):
        runtime.topk(shuffled_urgencies(16), "most urgent", k=3, by="{text}")

    assert fake.requests == []


KILLED_TOPK = """
import sys
import pandas as pd
from agentrt_jupyter import AgentRuntime, RuntimeConfig
url, token, store, criterion, tag = sys.argv[1:]
rt = AgentRuntime(RuntimeConfig(base_url=url, api_key=token, api_version="v1beta",
                                store_path=store))
frame = pd.DataFrame({"text": [f"{tag} row {n}" for n in range(4)]})
rt.topk(frame, criterion, k=1, by="{text}", progress=False)
print("finished before the kill")
"""


def test_after_kill_9_in_its_second_round_a_rerun_sends_only_that_round(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    final = f"First item:\n{tag} row 0\n\nSecond item:\n{tag} row 2"  # round 2's one pair
    server.push_faults("hang", match=final)
    criterion = constant_criterion(tag)
    kill_9_midway(
        KILLED_TOPK,
        server.url,
        server.token,
        str(store_path),
        criterion,
        tag,
        until=lambda: server.wait_for_tagged(json.dumps(final)[1:-1], timeout=30),
    )
    before = len(requests_with(server, tag))

    runtime = AgentRuntime(runtime_config(server, store_path=store_path))
    try:
        frame = pd.DataFrame({"text": [f"{tag} row {n}" for n in range(4)]})
        top = runtime.topk(frame, criterion, k=1, by="{text}", progress=False)
    finally:
        runtime.shutdown(10.0)

    assert list(top.index) == [0]
    assert (top.attrs["agentrt"].cached, top.attrs["agentrt"].calls) == (2, 1)
    (rerun,) = requests_with(server, tag)[before:]
    assert final in json.dumps(rerun["body"]).replace("\\n", "\n")


def test_answers_that_contradict_each_other_still_give_k_distinct_rows() -> None:
    """A judge that answers by a hash of the question (cycles: a > b > c > a) must not
    break the tournament or pass its bound."""
    rounds = topk_rounds([f"row {n}" for n in range(13)], "best", 5, default_max_calls(13, 5))
    answer: pd.DataFrame | None = None
    asked = 0
    try:
        while True:
            ask = rounds.send(answer)
            asked += len(ask.prompts)
            coin = [hashlib.sha256(p.encode()).digest()[0] % 2 == 0 for p in ask.prompts]
            answer = pd.DataFrame({FIELD: pd.array(coin, dtype="boolean")})
    except StopIteration as stop:
        positions = stop.value

    assert len(positions) == len(set(positions)) == 5
    assert asked <= default_max_calls(13, 5)


def test_a_progress_listener_hears_every_round_however_small(
    judged: tuple[AgentRuntime, FakeBackend],
) -> None:
    runtime, _ = judged
    heard: list[BatchProgress] = []

    runtime.topk(shuffled_urgencies(16), "most urgent", k=2, by="{text}", progress=heard.append)

    assert {8, 4, 2, 1} <= {snapshot.total for snapshot in heard}
