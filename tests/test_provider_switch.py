"""Switching provider keeps the conversation: Gemini → OpenAI → Anthropic → Gemini with a
tool call in history, each turn through the real SDK on the local server, whose request
log shows the history converted into each wire format. What a provider cannot take
(another provider's thinking, an attachment it refuses) is left out with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter import AgentRuntime, blob
from agentrt_jupyter.backends.switch import sendable, switch_note
from agentrt_jupyter.content import BlobPart, TextPart
from agentrt_jupyter.conversation import ConversationMessage
from agentrt_jupyter.notebook.extension import loaded_magics
from agentrt_jupyter.server.process import LocalServer

from .conftest import wait_finished
from .shell_helpers import agent_shell, run

pytest.importorskip("openai")
pytest.importorskip("anthropic")

VIDEO = blob(b"\0\0\0\x18ftypmp42", "video/mp4")
"""Gemini takes it, OpenAI and Anthropic do not."""


def lookup(word: str) -> str:
    """Look a word up."""
    return f"{word} is a pet"


def sent(server: LocalServer, text: str) -> dict[str, Any]:
    """The body of the latest finished request whose prompt has `text`."""
    body: dict[str, Any] = wait_finished(server, text)[-1]["body"]
    return body


def test_a_conversation_crosses_three_providers_and_comes_back(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(tools=[lookup], include_thoughts=True)
    first = agent.chat([f'@@thought plan it\n@@call lookup {{"word": "cat"}}\none {tag}', VIDEO])
    assert first.text(timeout=10) == 'Tool results: {"lookup":{"result":"cat is a pet"}}'
    gemini_thoughts = sum(len(m.thoughts.split()) > 0 for m in agent.history())

    to_openai = agent.reconfigure(
        model="openai:gpt-4.1-mini", base_url=server.openai_base_url, api_key=server.token
    )
    assert to_openai == (
        f"switched to openai: dropped {gemini_thoughts} thinking parts and "
        "1 video/mp4 attachment from earlier turns"
    )
    assert agent.chat(f"two {tag}").text(timeout=10) == f"Echo: two {tag}"
    messages = sent(server, f"two {tag}")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    [call] = messages[1]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "lookup",
        {"word": "cat"},
    )
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": '{"result": "cat is a pet"}',
    }
    assert "[a video/mp4 attachment, left out: openai cannot take it]" in messages[0]["content"]

    to_anthropic = agent.reconfigure(
        model="anthropic:claude-sonnet-4-5", base_url=server.anthropic_base_url
    )
    assert to_anthropic == (
        f"switched to anthropic: dropped {gemini_thoughts} thinking parts and "
        "1 video/mp4 attachment from earlier turns"
    )
    assert agent.chat(f"@@thought weigh it\nthree {tag}").text(timeout=10) == (f"Echo: three {tag}")
    messages = sent(server, f"three {tag}")["messages"]
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    opening = messages[0]["content"]
    assert [b["type"] for b in opening] == ["text", "text"]
    assert opening[1]["text"] == "[a video/mp4 attachment, left out: anthropic cannot take it]"
    [use] = [b for b in messages[1]["content"] if b["type"] == "tool_use"]
    assert (use["name"], use["input"]) == ("lookup", {"word": "cat"})
    assert all(b["type"] != "thinking" for m in messages for b in m["content"])
    [result] = messages[2]["content"]
    assert (result["type"], result["tool_use_id"]) == ("tool_result", use["id"])

    back = agent.reconfigure(model=None, base_url=None, api_key=None)
    assert back == "switched to gemini: dropped 1 thinking part from earlier turns"
    assert agent.chat(f"four {tag}").text(timeout=10) == f"Echo: four {tag}"
    contents = sent(server, f"four {tag}")["contents"]
    assert [c["role"] for c in contents] == ["user", "model"] * 4 + ["user"]
    parts = [p for c in contents for p in c["parts"]]
    assert any(p.get("inlineData", {}).get("mime_type") == "video/mp4" for p in parts)
    assert any(p.get("functionCall", {}).get("name") == "lookup" for p in parts)
    assert any(p.get("functionResponse", {}).get("name") == "lookup" for p in parts)
    assert not any(p.get("thought") or p.get("thoughtSignature") for p in parts)
    providers = [e.provider for e in agent.ledger()]
    assert providers == ["gemini", "gemini", "openai", "anthropic", "gemini"]
    assert len(agent.history()) == 10  # nothing of it was lost on the way


def test_a_switch_with_nothing_to_leave_out_says_nothing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    agent.chat(f"plain {tag}").text(timeout=10)

    note = agent.reconfigure(
        model="openai:gpt-4.1-mini", base_url=server.openai_base_url, api_key=server.token
    )
    assert note is None
    assert agent.reconfigure(temperature=0.5) is None  # same provider: no switch


def test_the_cell_shows_the_switch_in_one_line(
    tmp_path: Path, server: LocalServer, capsys: pytest.CaptureFixture[str], tag: str
) -> None:
    env = {"OPENAI_API_KEY": server.token, "OPENAI_BASE_URL": server.openai_base_url}
    with agent_shell(tmp_path, **env) as ip:
        runtime = loaded_magics(ip).runtime
        thinker = runtime.create_agent(name="thinker", include_thoughts=True)
        thinker.chat(f"@@thought hmm\nfirst {tag}").text(timeout=10)
        capsys.readouterr()
        error = run(ip, f"%%agent thinker --model openai:gpt-4.1-mini\nsecond {tag}")
        shown = capsys.readouterr().out

    assert error is None
    notes = [line for line in shown.splitlines() if "switched to" in line]
    assert notes == [
        "agentrt: thinker: switched to openai: dropped 1 thinking part from earlier turns"
    ]


def test_history_converts_without_changing_what_history_keeps() -> None:
    thought = TextPart("hmm", thought=True, thought_signature=b"anthropic:sig")
    history = [
        ConversationMessage("user", (TextPart("hi"), BlobPart("audio/wav", b"RIFF")), 1),
        ConversationMessage("model", (thought, TextPart("hello")), 1, model="anthropic:c"),
    ]

    as_anthropic, left = sendable(history, "anthropic")
    assert as_anthropic[1] is history[1] and left == {"audio/wav": 1}
    as_openai, left = sendable(history, "openai")
    assert as_openai[0] is history[0] and as_openai[1].parts == (TextPart("hello"),)
    assert left == {"thinking": 1}
    assert switch_note(history, "ollama") == (
        "switched to ollama: dropped 1 thinking part and 1 audio/wav attachment from earlier turns"
    )
    assert history[1].parts == (thought, TextPart("hello"))
