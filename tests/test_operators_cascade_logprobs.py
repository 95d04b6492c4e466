"""Cascades measured by logprobs where the provider gives them, against the scripted engine
through each provider's real SDK: each row scripts its reply (`@@reply`) and the log
probability of its tokens (`@@logprob`), which the engine sends only when asked."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from agentrt_jupyter import AgentConfig, AgentRuntime, InvalidConfig
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, use_provider

pytestmark = pytest.mark.timeout(60)

CHEAP_AND_STRONG = {
    "gemini": ("gemini-2.5-flash-lite", "gemini-2.5-pro"),
    "openai": ("openai:gpt-4.1-mini", "openai:gpt-4.1"),
    "anthropic": ("anthropic:claude-haiku-4-5", "anthropic:claude-sonnet-4-5"),
}
SURE, UNSURE = -0.01, -1.5
"""Token logprobs: exp(-0.01) ~ 0.99 is above the threshold, exp(-1.5) ~ 0.22 below."""


def rows(tag: str, scripts: list[tuple[dict[str, Any], float]]) -> pd.DataFrame:
    """One row per (reply, token logprob), indexed r0, r1, ..."""
    texts = [
        f"{tag} [row {n}] review text\n@@reply {json.dumps(reply)}\n@@logprob {logprob}"
        for n, (reply, logprob) in enumerate(scripts)
    ]
    return pd.DataFrame({"review": texts}, index=[f"r{n}" for n in range(len(texts))])


def rows_by_model(server: LocalServer, tag: str) -> dict[str, list[int]]:
    by_model: dict[str, list[int]] = {}
    for request in requests_with(server, tag):
        row = int(json.dumps(request["body"]).split("[row ", 1)[1].split("]", 1)[0])
        by_model.setdefault(request["model"], []).append(row)
    return {model: sorted(sent) for model, sent in by_model.items()}


def bare(model: str) -> str:
    return model.split(":", 1)[-1]


# The confidence fields say the opposite of the logprobs: only logprobs pick rows 1 and 3.
BY_LOGPROBS = [
    ({"match": True, "confidence": 0.1}, SURE),
    ({"match": True, "confidence": 0.99}, UNSURE),
    ({"match": False, "confidence": 0.1}, SURE),
    ({"match": True, "confidence": 0.99}, UNSURE),
]


@pytest.mark.parametrize("provider_name", ["gemini", "openai"])
def test_a_cascade_escalates_the_rows_whose_reply_logprobs_are_low(
    provider_name: str, server: LocalServer, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = use_provider(provider_name, server, monkeypatch)
    cheap, strong = CHEAP_AND_STRONG[provider_name]
    with AgentRuntime(provider.config()) as rt:
        kept = rt.filter(rows(tag, BY_LOGPROBS), "{review}", model=cheap, escalate_to=strong)

    assert rows_by_model(server, tag) == {bare(cheap): [0, 1, 2, 3], bare(strong): [1, 3]}
    up = kept.attrs["agentrt"].escalation
    assert (up.rows, up.signal) == (2, "logprobs")
    assert "(by logprobs)" in repr(kept.attrs["agentrt"])
    assert list(kept.index) == ["r0", "r1", "r3"]
    sent = requests_with(server, tag)
    cheap_asked = [r["body"] for r in sent if r["model"] == bare(cheap)]
    strong_asked = [r["body"] for r in sent if r["model"] == bare(strong)]
    if provider_name == "openai":
        assert all(body.get("logprobs") is True for body in cheap_asked)
        assert not any(body.get("logprobs") for body in strong_asked)
    else:
        assert all(b["generationConfig"].get("responseLogprobs") for b in cheap_asked)
        assert not any(b["generationConfig"].get("responseLogprobs") for b in strong_asked)


def test_an_anthropic_cascade_reads_the_confidence_field(
    server: LocalServer, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = use_provider("anthropic", server, monkeypatch)
    cheap, strong = CHEAP_AND_STRONG["anthropic"]
    with AgentRuntime(provider.config()) as rt:
        kept = rt.filter(rows(tag, BY_LOGPROBS), "{review}", model=cheap, escalate_to=strong)

    # the fields, not the scripted logprobs (Anthropic gives none), pick rows 0 and 2
    assert rows_by_model(server, tag) == {bare(cheap): [0, 1, 2, 3], bare(strong): [0, 2]}
    up = kept.attrs["agentrt"].escalation
    assert (up.rows, up.signal) == (2, "confidence field")
    assert not any("logprobs" in r["body"] for r in requests_with(server, tag))


def test_rows_without_logprobs_fall_back_to_their_confidence_field(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = rows(tag, BY_LOGPROBS[:2])
    unscripted = (
        f"{tag} [row 2] review text\n@@reply {json.dumps({'match': True, 'confidence': 0.2})}"
    )
    frame.loc["r2"] = [unscripted]

    rt.filter(frame, "{review}", model="gemini-2.5-flash-lite", escalate_to="gemini-2.5-pro")
    up_rows = rows_by_model(server, tag)["gemini-2.5-pro"]

    assert up_rows == [1, 2]  # r1 by its logprobs, r2 (no logprobs sent) by its field


def test_a_map_with_logprobs_gives_each_row_its_mean_token_logprob(
    rt: AgentRuntime, tag: str
) -> None:
    frame = rows(tag, [({"match": True}, -0.25), ({"match": False}, -2.0)])

    result = rt.map(frame, "{review}", logprobs=True)

    assert result["logprob"].tolist() == pytest.approx([-0.25, -2.0])
    assert "logprob" not in rt.map(frame, "{review}", refresh=True).columns


def test_logprobs_are_refused_for_anthropic_models() -> None:
    with pytest.raises(InvalidConfig) as caught:
        AgentConfig(model="anthropic:claude-sonnet-4-5", logprobs=True)
    assert caught.value.field == "logprobs"
