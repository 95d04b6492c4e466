"""The awaiting operators (`runtime.aio.topk`, `agg`, `dedupe`, `join`) return what the
blocking ones do, and plan the same with `explain=True`: one implementation, two doors."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.batch.explain import OperatorPlan

from .operator_helpers import fake_runtime, prompt_of

ITEMS = re.compile(r"First item:\n(.*)\n\nSecond item:\n(.*)$", re.S)
STATEMENT = re.compile(r"First: (.*)\nSecond: (.*)\n")


def judge(request: ModelRequest) -> str:
    """An exact judge: the bigger number is more urgent; the same last word, the same thing;
    a pair naming one model twice, a match."""
    text = prompt_of(request)
    if found := ITEMS.search(text):
        first, second = (int(item.split()[-1]) for item in found.groups())
        return json.dumps({"first_is_better": first > second})
    if "Does this statement hold" in text:  # join: both sides name the same model
        return json.dumps({"match": text.count("model 1") >= 2 or text.count("model 2") >= 2})
    if "same real-world entity" in text:
        pair = STATEMENT.search(text)
        assert pair is not None, text
        return json.dumps({"same": pair.group(1).split()[-1] == pair.group(2).split()[-1]})
    return "summary"


@pytest.fixture
def runtime() -> Iterator[AgentRuntime]:
    with fake_runtime(judge) as (made, _):
        yield made


def tickets() -> pd.DataFrame:
    urgency = list(range(20))
    random.Random(7).shuffle(urgency)
    return pd.DataFrame(
        {"text": [f"ticket urgency {u}" for u in urgency], "g": [u % 3 for u in urgency]}
    )


DUPLICATES = pd.DataFrame({"text": ["widget model 1", "widget, model 1", "gadget model 2"]})
LEFT = pd.DataFrame({"p": ["blue model 1", "blue model 2"]})
RIGHT = pd.DataFrame({"n": ["model 1 blue", "model 2 blue"]})
CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "topk": ((tickets(), "most urgent"), {"k": 3, "by": "{text}"}),
    "agg": ((tickets(), "sum up"), {"by": "g"}),
    "dedupe": ((DUPLICATES, "{text}"), {}),
    "join": ((LEFT, RIGHT, "First: {left.p}\nSecond: {right.n}"), {"candidates": None}),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_the_awaiting_operator_returns_and_plans_what_the_blocking_one_does(
    runtime: AgentRuntime, name: str
) -> None:
    args, options = CALLS[name]
    blocking = getattr(runtime, name)(*args, **options, progress=False)
    awaited = asyncio.run(getattr(runtime.aio, name)(*args, **options, progress=False))
    assert len(blocking) > 0 and blocking.equals(awaited)

    plan = getattr(runtime, name)(*args, **options, explain=True)
    awaited_plan = asyncio.run(getattr(runtime.aio, name)(*args, **options, explain=True))
    assert isinstance(plan, OperatorPlan) and plan == awaited_plan
