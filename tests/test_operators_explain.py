"""Plans and prices before spending: `explain=True` (alias `dry_run=True`) on the
operators, against the local server, whose request log proves nothing was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, CostNotApproved, InvalidConfig
from agentrt_jupyter.batch import PRICES, ModelPrice, explain
from agentrt_jupyter.batch.explain import OperatorPlan, PlanStep
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with

pytestmark = pytest.mark.timeout(60)


def texts(tag: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} row {i} " + "word " * 10 for i in range(n)]})


def test_explain_map_prices_every_row_and_sends_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    plan = rt.map(texts(tag, 20), "Summarise: {text}", explain=True)

    assert isinstance(plan, OperatorPlan)
    assert (plan.operator, plan.calls, plan.cached_calls) == ("map", 20, 0)
    assert plan.tokens_in > 20 * 10 and plan.tokens_out > 0
    assert plan.usd is not None and plan.usd > 0
    assert requests_with(server, tag) == []


def test_dry_run_counts_rows_answered_before_as_cached(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = texts(tag, 6)
    rt.map(frame.iloc[:4], "Summarise: {text}")
    sent = len(requests_with(server, tag))

    plan = rt.map(frame, "Summarise: {text}", dry_run=True)

    assert (plan.calls, plan.cached_calls) == (2, 4)
    assert len(requests_with(server, tag)) == sent == 4
    assert rt.map(frame, "Summarise: {text}", refresh=True, explain=True).cached_calls == 0


def test_plan_prices_with_the_model_s_price_and_says_when_none_is_known(
    rt: AgentRuntime, tag: str
) -> None:
    PRICES["explain-test-model"] = ModelPrice(1_000_000.0, 0.0)  # $1 per input token
    try:
        plan = rt.map(texts(tag, 3), "{text}", model="explain-test-model", explain=True)
    finally:
        del PRICES["explain-test-model"]
    assert plan.usd == pytest.approx(plan.tokens_in)

    unknown = rt.map(texts(tag, 3), "{text}", model="no-such-model-priced", explain=True)
    assert unknown.usd is None
    assert "no price known" in repr(unknown)


def test_plan_reads_as_text_html_and_a_frame(rt: AgentRuntime, tag: str) -> None:
    frame = texts(tag, 5)
    frame.loc[2, "text"] = None
    plan = rt.map(frame, "{text:>5}", budget_tokens=10_000, explain=True)

    assert repr(plan).startswith("map plan: 5 calls (0 rows cached)")
    assert "budget_tokens=10,000" in repr(plan)
    assert "<table>" in plan._repr_html_()
    table = plan.to_frame()
    assert list(table.index) == ["map"]
    assert table.loc["map", "calls"] == 5


def test_aio_explain_sends_nothing(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    plan = asyncio.run(rt.aio.map(texts(tag, 4), "{text}", explain=True))
    assert plan.calls == 4
    assert requests_with(server, tag) == []


def test_explain_refuses_a_value_that_is_not_a_bool(rt: AgentRuntime, tag: str) -> None:
    with pytest.raises(InvalidConfig, match="dry_run"):
        rt.map(texts(tag, 1), "{text}", dry_run="yes")


def test_a_step_scaled_to_a_share_keeps_its_model_and_price_per_call() -> None:
    step = PlanStep(
        "judge", "m", calls=100, cached_calls=5, tokens_in=1000, tokens_out=100, usd=2.0
    )
    escalated = step.scaled(0.25, "escalate")
    assert (escalated.name, escalated.calls, escalated.cached_calls) == ("escalate", 25, 0)
    assert escalated.usd == pytest.approx(0.5)
    plan = OperatorPlan("filter", (step, escalated), ("a note",))
    assert (plan.calls, plan.usd) == (125, pytest.approx(2.5))


class AnsweringGate:
    """A cost gate that answers `approve` and records each plan it was asked about."""

    def __init__(self, threshold: float, approve: bool) -> None:
        self.threshold = threshold
        self.approve = approve
        self.asked: list[tuple[str, OperatorPlan]] = []

    def ask(self, plan: OperatorPlan) -> bool:
        self.asked.append(("blocking", plan))
        return self.approve

    async def aask(self, plan: OperatorPlan) -> bool:
        self.asked.append(("awaiting", plan))
        return self.approve


@pytest.fixture
def gate_finder() -> Iterator[Callable[[AnsweringGate | None], None]]:
    """Install a gate for the test (the notebook's is restored after)."""
    saved = explain._gate_finder

    def install(gate: AnsweringGate | None) -> None:
        explain.set_cost_gate(lambda: gate)

    yield install
    explain.set_cost_gate(saved)


def test_a_plan_over_the_threshold_is_asked_about_and_a_refusal_sends_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str, gate_finder: Callable[..., None]
) -> None:
    refusing = AnsweringGate(threshold=0.0, approve=False)
    gate_finder(refusing)

    with pytest.raises(CostNotApproved, match="map was not approved") as refused:
        rt.map(texts(tag, 3), "{text}")
    with pytest.raises(CostNotApproved, match="filter was not approved"):
        asyncio.run(rt.aio.filter(texts(tag, 3), "{text}"))

    assert [(how, plan.operator, plan.calls) for how, plan in refusing.asked] == [
        ("blocking", "map", 3),
        ("awaiting", "filter", 3),
    ]
    assert refused.value.threshold == 0.0 and refused.value.usd is not None
    assert requests_with(server, tag) == []


def test_an_approved_plan_runs_and_one_under_the_threshold_is_not_asked_about(
    rt: AgentRuntime, server: LocalServer, tag: str, gate_finder: Callable[..., None]
) -> None:
    approving = AnsweringGate(threshold=0.0, approve=True)
    gate_finder(approving)
    assert (rt.map(texts(tag, 2), "{text}")["status"] == "ok").all()
    assert len(approving.asked) == 1 and len(requests_with(server, tag)) == 2

    generous = AnsweringGate(threshold=1_000.0, approve=False)
    gate_finder(generous)
    assert len(rt.map(texts(tag, 3), "{text}")) == 3
    unknown = rt.map(texts(tag, 1), "{text}", model="no-such-model-priced", progress=False)
    assert len(unknown) == 1  # no price known: nothing to compare, so nothing is asked
    assert generous.asked == []
