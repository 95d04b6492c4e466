"""Budgets with rows in parallel (issue 17 item 3), against the local server.

Rows differ in size (a scripted reply of 2 to 60 words), so an estimate made from the
rows seen so far is often short: the run may pass its budget only by one row's excess.
"""

from __future__ import annotations

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime
from agentrt_jupyter.batch import PRICES

pytestmark = pytest.mark.timeout(60)

REPLY_WORDS = (2, 30, 6, 60, 4, 20, 10, 45)


def uneven_rows(count: int) -> pd.DataFrame:
    words = [REPLY_WORDS[n % len(REPLY_WORDS)] for n in range(count)]
    return pd.DataFrame({"n": range(count), "reply": [" ".join(["w"] * k) for k in words]})


def template(tag: str, label: str) -> str:
    return f"{tag} {label} [row {{n}}]\n@@reply {{reply}}"


@pytest.mark.parametrize("concurrency", [1, 8, 32])
def test_a_token_budget_is_passed_by_at_most_one_row_at_any_concurrency(
    rt: AgentRuntime, tag: str, concurrency: int
) -> None:
    budget = 600
    result = rt.map(
        uneven_rows(64),
        template(tag, f"tokens c{concurrency}"),
        budget_tokens=budget,
        concurrency=concurrency,
        max_concurrency=concurrency,
    )

    progress = result.attrs["agentrt"]
    billed = progress.tokens_in + progress.tokens_out
    row_tokens = (result["tokens_in"] + result["tokens_out"]).dropna()
    assert progress.state == "stopped" and "budget_tokens" in progress.stop_reason
    assert billed == int(row_tokens.sum())
    assert billed <= budget + int(row_tokens.max())
    assert billed >= budget - 2 * int(row_tokens.max())  # the budget was used, not left idle


@pytest.mark.parametrize("concurrency", [1, 8, 32])
def test_a_dollar_budget_is_passed_by_at_most_one_row_at_any_concurrency(
    rt: AgentRuntime, tag: str, concurrency: int
) -> None:
    price = PRICES["gemini-2.5-flash"]
    budget = price.cost(200, 400)
    result = rt.map(
        uneven_rows(64),
        template(tag, f"usd c{concurrency}"),
        budget_usd=budget,
        concurrency=concurrency,
        max_concurrency=concurrency,
    )

    progress = result.attrs["agentrt"]
    done = result.dropna(subset=["tokens_in"])
    pairs = zip(done["tokens_in"], done["tokens_out"], strict=True)
    row_usd = [price.cost(int(tokens_in), int(tokens_out)) for tokens_in, tokens_out in pairs]
    assert progress.state == "stopped" and "budget_usd" in progress.stop_reason
    assert progress.cost_usd == pytest.approx(sum(row_usd))
    assert progress.cost_usd <= budget + max(row_usd) + 1e-12
    assert progress.cost_usd >= budget - 2 * max(row_usd)
