"""Content and configuration: what reaches the wire, and typed errors for what cannot."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agentrt_jupyter as art
from agentrt_jupyter import AgentConfig, AgentRuntime, InvalidConfig, InvalidContent, RuntimeConfig
from agentrt_jupyter.content import part_from_json, part_to_json, to_parts
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_text_images_pdfs_audio_and_files_reach_the_model(
    rt: AgentRuntime, server: LocalServer, tag: str, tmp_path: Path
) -> None:
    pdf_path = tmp_path / "doc.pdf"
    pdf_path.write_bytes(b"%PDF-1.4 tiny")
    wav_path = tmp_path / "clip.wav"
    wav_path.write_bytes(b"RIFF....WAVE")
    notes = tmp_path / "notes.txt"
    notes.write_text("plain notes")
    agent = rt.create_agent()
    content = [
        art.image(PNG, "image/png"),
        art.pdf(pdf_path),
        art.audio(wav_path),
        notes,
        art.blob(b"{}", "application/json"),
        f"describe these {tag}",
    ]
    reply = agent.chat(content).text(timeout=10)
    assert reply == (
        f"Echo: describe these {tag} [parts: image/png, application/pdf, audio/x-wav, "
        "text/plain, application/json]"
    )
    parts = requests_with(server, tag)[-1]["body"]["contents"][0]["parts"]
    assert base64.urlsafe_b64decode(parts[0]["inlineData"]["data"]) == PNG
    stored = agent.history()[0].parts
    assert stored[1] == art.BlobPart("application/pdf", b"%PDF-1.4 tiny")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"raw", "raw bytes need a MIME type"),
        ("   ", "empty"),
        ([], "empty"),
        (12, "cannot send a int"),
        ({"text": "hi"}, "cannot send a dict"),
        (Path("/no/such/file.png"), "no file at"),
    ],
)
def test_unsupported_content_is_a_typed_error(content: object, message: str) -> None:
    with pytest.raises(InvalidContent, match=message):
        to_parts(content)


def test_unsupported_mime_types_and_mismatched_helpers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidContent, match="not accepted by Gemini"):
        art.blob(b"MZ", "application/x-msdownload")
    with pytest.raises(InvalidContent, match="not a MIME type"):
        art.blob(b"x", "png")
    with pytest.raises(InvalidContent, match="expected image/"):
        art.image(b"%PDF", "application/pdf")
    odd = tmp_path / "data.unknownext"
    odd.write_bytes(b"?")
    with pytest.raises(InvalidContent, match="cannot tell the MIME type"):
        art.file(odd)


def test_invalid_content_is_raised_in_the_caller_before_anything_is_sent(rt: AgentRuntime) -> None:
    agent = rt.create_agent()
    with pytest.raises(InvalidContent):
        agent.chat(b"bytes")
    assert agent.history() == []


def test_generation_settings_and_schema_reach_the_wire(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    agent = rt.create_agent(
        model="gemini-2.5-pro",
        system_instruction="You answer in JSON.",
        temperature=0.2,
        top_p=0.9,
        top_k=20,
        max_output_tokens=64,
        stop_sequences=["END"],
        seed=7,
        thinking_budget=128,
        include_thoughts=True,
        response_schema=schema,
    )
    handle = agent.chat(f'@@thought pondering deeply\n@@reply {{"answer": "yes"}}\n{tag}')
    assert handle.text(timeout=10) == '{"answer": "yes"}'
    assert handle.result().thoughts == "pondering deeply"
    assert handle.result().usage.thoughts_tokens == 2
    request = requests_with(server, tag)[-1]
    assert request["model"] == "gemini-2.5-pro"
    config = request["body"]["generationConfig"]
    assert config["temperature"] == 0.2
    assert config["topP"] == 0.9 and config["topK"] == 20
    assert config["maxOutputTokens"] == 64
    assert config["stopSequences"] == ["END"]
    assert config["seed"] == 7
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema
    thinking = config["thinkingConfig"]
    assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 128
    model_message = agent.history()[-1]
    assert model_message.thoughts == "pondering deeply"
    later = agent.chat(f"second {tag}")
    later.text(timeout=10)
    sent = requests_with(server, f"second {tag}")[-1]["body"]["contents"]
    assert all(not p.get("thought") for c in sent for p in c["parts"])


def test_max_tokens_and_stop_sequences_are_honoured(rt: AgentRuntime, tag: str) -> None:
    short = rt.create_agent(max_output_tokens=3)
    result = short.chat(f"one two three four five {tag}").result(timeout=10)
    assert result.text.split() == ["Echo:", "one", "two"]
    assert result.finish_reason == "MAX_TOKENS"
    stopped = rt.create_agent(stop_sequences=["three"])
    assert stopped.chat(f"one two three four {tag}").text(timeout=10) == "Echo: one two "


@pytest.mark.parametrize(
    ("settings_", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 1.5}, "max_output_tokens"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stop_sequences": [""]}, "stop_sequences"),
        ({"stop_sequences": ["a", "b", "c", "d", "e", "f"]}, "stop_sequences"),
        ({"seed": 2**40}, "seed"),
        ({"max_tool_steps": -1}, "max_tool_steps"),
        ({"compaction_threshold": 10}, "compaction_threshold"),
        ({"model": ""}, "model"),
        ({"name": "a\nb"}, "name"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"api_version": "v9"}, "api_version"),
        ({"include_thoughts": "yes"}, "include_thoughts"),
        ({"response_schema": 3}, "response_schema"),
        ({"tools": "search"}, "tools"),
        ({"confirm_tool": 1}, "confirm_tool"),
    ],
)
def test_invalid_agent_config_names_the_field(settings_: dict, field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        AgentConfig(**settings_)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    ("settings_", "field"),
    [
        ({"backend": "openai"}, "backend"),
        ({"idle_chunk_timeout": 0}, "idle_chunk_timeout"),
        ({"http_retry_attempts": 0}, "http_retry_attempts"),
        ({"quota_max_retries": -1}, "quota_max_retries"),
        ({"store_path": 5}, "store_path"),
    ],
)
def test_invalid_runtime_config_names_the_field(settings_: dict, field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        RuntimeConfig(**settings_)
    assert caught.value.field == field


def test_gemini_backend_without_a_key_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(InvalidConfig, match="GOOGLE_API_KEY") as caught:
        RuntimeConfig(backend="gemini")
    assert caught.value.field == "api_key"
    assert RuntimeConfig(store_path=None).resolved_backend() == "local"
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    assert RuntimeConfig(store_path=None).resolved_backend() == "gemini"


numbers = st.one_of(
    st.none(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    temperature=numbers,
    top_p=numbers,
    max_output_tokens=numbers,
    seed=numbers,
    stops=st.lists(st.text(max_size=4), max_size=7),
)
def test_agent_config_either_validates_or_names_a_field(
    temperature: object, top_p: object, max_output_tokens: object, seed: object, stops: list[str]
) -> None:
    try:
        config = AgentConfig(
            temperature=temperature,  # type: ignore[arg-type]
            top_p=top_p,  # type: ignore[arg-type]
            max_output_tokens=max_output_tokens,  # type: ignore[arg-type]
            seed=seed,  # type: ignore[arg-type]
            stop_sequences=stops,
        )
    except InvalidConfig as exc:
        assert exc.field in {"temperature", "top_p", "max_output_tokens", "seed", "stop_sequences"}  # noqa: PT017
        return
    assert config.temperature is None or 0 <= config.temperature <= 2
    assert config.top_p is None or 0 <= config.top_p <= 1
    assert config.max_output_tokens is None or (
        isinstance(config.max_output_tokens, int) and config.max_output_tokens >= 1
    )
    assert all(config.stop_sequences) and len(config.stop_sequences) <= 5


content_items = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=8),
    st.integers(),
    st.none(),
    st.builds(art.TextPart, st.text(min_size=1, max_size=10)),
    st.tuples(
        st.binary(max_size=8),
        st.sampled_from(["image/png", "audio/mp3", "x/y", "nope", "application/pdf"]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(content_items, st.lists(content_items, max_size=4)))
def test_content_either_normalises_and_round_trips_or_is_invalid_content(item: object) -> None:
    def build(value: object) -> object:
        if isinstance(value, tuple):
            return art.blob(value[0], value[1])
        return value

    try:
        parts = to_parts([build(v) for v in item] if isinstance(item, list) else build(item))
    except InvalidContent as exc:
        assert str(exc)  # noqa: PT017
        return
    assert parts
    for part in parts:
        assert part_from_json(part_to_json(part)) == part
