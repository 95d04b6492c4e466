"""What a provider cannot honour is refused before anything is sent: a setting when the
agent is created or reconfigured (`InvalidConfig` naming setting and provider), a part
when a turn's content is given (`InvalidContent` naming provider and part), with the
server's request log showing no request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter import AgentRuntime, InvalidConfig, InvalidContent, blob
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with
from .shell_helpers import agent_shell, usage_error

pytest.importorskip("openai")
pytest.importorskip("anthropic")

OPENAI = "openai:gpt-4.1-mini"
ANTHROPIC = "anthropic:claude-sonnet-4-5"


def endpoint(server: LocalServer, model: str) -> dict[str, Any]:
    """The settings that point an agent of `model`'s provider at the local server."""
    provider = model.partition(":")[0]
    url = server.anthropic_base_url if provider == "anthropic" else server.openai_base_url
    return {"model": model, "base_url": url, "api_key": server.token}


@pytest.mark.parametrize(
    ("model", "setting", "value", "said"),
    [
        (OPENAI, "top_k", 5, "the openai provider (Chat Completions) has no top_k"),
        (OPENAI, "response_mime_type", "text/x.enum", "the openai provider answers text or JSON"),
        ("ollama:qwen3:4b", "top_k", 5, "the ollama provider (Chat Completions) has no top_k"),
        (ANTHROPIC, "seed", 7, "the anthropic provider has no seed"),
        (ANTHROPIC, "temperature", 1.5, "the anthropic provider takes a temperature from 0 to 1"),
    ],
)
def test_a_setting_the_provider_cannot_honour_is_refused_when_the_agent_is_created(
    rt: AgentRuntime, server: LocalServer, model: str, setting: str, value: Any, said: str
) -> None:
    before = len(server.requests())
    with pytest.raises(InvalidConfig) as caught:
        rt.create_agent(**endpoint(server, model), **{setting: value})

    assert caught.value.field == setting and said in str(caught.value)
    assert rt.agents() == []
    assert len(server.requests()) == before


def test_reconfiguring_onto_a_provider_that_cannot_honour_a_setting_is_refused_and_changes_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(top_k=5)  # Gemini takes top_k
    agent.chat(f"first {tag}").text(timeout=10)

    with pytest.raises(InvalidConfig, match="the openai provider") as caught:
        agent.reconfigure(**endpoint(server, OPENAI))
    with pytest.raises(InvalidConfig, match="the anthropic provider has no seed"):
        agent.reconfigure(**endpoint(server, ANTHROPIC), top_k=None, seed=1)

    assert caught.value.field == "top_k"
    [info] = rt.agents()
    assert info.model == rt.config.model_for(None)
    assert agent.chat(f"second {tag}").text(timeout=10) == f"Echo: second {tag}"
    assert all(r["path"].endswith(":streamGenerateContent") for r in requests_with(server, tag))


@pytest.mark.parametrize(
    ("model", "part", "said"),
    [
        (OPENAI, blob(b"\0\0\0\x18ftyp", "video/mp4"), "openai provider (Chat Completions)"),
        ("ollama:qwen3:4b", blob(b"RIFF", "audio/wav"), "ollama provider (Chat Completions)"),
        (ANTHROPIC, blob(b"RIFF", "audio/wav"), "anthropic provider does not take audio/wav"),
    ],
)
def test_a_part_the_provider_cannot_take_is_refused_by_chat_before_any_request(
    rt: AgentRuntime, server: LocalServer, tag: str, model: str, part: Any, said: str
) -> None:
    agent = rt.create_agent(**endpoint(server, model))

    with pytest.raises(InvalidContent) as caught:
        agent.chat([f"look {tag}", part])

    assert said in str(caught.value) and part.mime_type in str(caught.value)
    assert requests_with(server, tag) == []
    assert agent.history() == [] and agent.turn_count() == 0
    assert agent.chat(f"text is fine {tag}").text(timeout=10) == f"Echo: text is fine {tag}"


def test_the_cell_magic_refuses_a_setting_the_new_provider_cannot_honour(tmp_path: Path) -> None:
    with agent_shell(tmp_path) as ip:
        error = usage_error(ip, f"%%agent hot --model {ANTHROPIC} --temperature 1.5\nhello")

    assert "temperature" in error and "anthropic provider" in error
