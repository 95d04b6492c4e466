"""Choosing a provider: `provider:model` names, where each provider's key and host come
from, which backend answers, the name sent, cache labels and the ledger's provider column.

Fast and offline: endpoints are seen through a recording `backend_factory` answering with
`FakeBackend`; the end-to-end tests at the bottom run each provider's SDK against the
local server once its backend module exists.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import agentrt_jupyter.backends
from agentrt_jupyter import AgentRuntime, FakeBackend, InvalidConfig, RuntimeConfig
from agentrt_jupyter.backends import default_backend
from agentrt_jupyter.backends.base import Endpoint, ModelRequest
from agentrt_jupyter.config import OLLAMA_BASE_URL, AgentConfig, split_model
from agentrt_jupyter.endpoints import Backends
from agentrt_jupyter.frames import history_frame, ledger_frame
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config

GEMINI_KEY = "AIzaSy-RUNTIME-GEMINI-SECRET"
ENVIRONMENT = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENVIRONMENT:
        monkeypatch.delenv(variable, raising=False)


class Recording:
    """A backend factory that keeps every endpoint it is given and every request sent."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        self.models: list[str] = []

    def __call__(self, endpoint: Endpoint) -> FakeBackend:
        self.endpoints.append(endpoint)
        return FakeBackend(self._answer, credential=f"fake-{len(self.endpoints)}")

    def _answer(self, request: ModelRequest) -> str:
        self.models.append(request.model)
        return f"answered {request.model}"


@pytest.fixture
def recording() -> Recording:
    return Recording()


@pytest.fixture
def runtime(recording: Recording) -> Iterator[AgentRuntime]:
    config = RuntimeConfig(api_key=GEMINI_KEY, store_path=None, reply_cache=True)
    with AgentRuntime(config, backend_factory=recording) as rt:
        yield rt


def endpoint_of(runtime: AgentRuntime, recording: Recording, **settings: Any) -> Endpoint:
    """The endpoint an agent with `settings` talks to (after one turn)."""
    agent = runtime.create_agent(**settings)
    agent.chat("hello").text()
    return recording.endpoints[-1]


@pytest.mark.parametrize(
    ("model", "provider", "name"),
    [
        ("gemini-2.5-flash", "gemini", "gemini-2.5-flash"),
        ("models/gemini-2.5-flash", "gemini", "models/gemini-2.5-flash"),
        ("openai:gpt-4.1-mini", "openai", "gpt-4.1-mini"),
        ("anthropic:claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        ("vertex:gemini-2.5-flash", "vertex", "gemini-2.5-flash"),
        ("ollama:qwen3:4b", "ollama", "qwen3:4b"),
        ("openai:meta-llama/Llama-3.1-8B-Instruct", "openai", "meta-llama/Llama-3.1-8B-Instruct"),
    ],
)
def test_a_model_names_its_provider_and_a_bare_name_is_gemini(
    model: str, provider: str, name: str
) -> None:
    assert AgentConfig(model=model).model == model
    assert RuntimeConfig(default_model=model, store_path=None).default_model == model
    assert split_model(model) == (provider, name)


def test_an_unknown_provider_is_refused_naming_the_model_and_the_known_ones() -> None:
    with pytest.raises(InvalidConfig) as caught:
        AgentConfig(model="mistral:large")
    message = str(caught.value)
    assert caught.value.field == "model"
    assert "'mistral:large'" in message
    for provider in ("gemini", "vertex", "openai", "anthropic", "ollama"):
        assert provider in message
    with pytest.raises(InvalidConfig, match="ollama:qwen3:4b") as default:
        RuntimeConfig(default_model="qwen3:4b", store_path=None)
    assert default.value.field == "default_model"


@pytest.mark.parametrize("model", ["openai:", "openai:gpt 4", "anthropic:a..b", "ollama:-x"])
def test_a_malformed_name_after_the_prefix_is_refused(model: str) -> None:
    with pytest.raises(InvalidConfig, match="is not a model name") as caught:
        AgentConfig(model=model)
    assert caught.value.field == "model"


def test_vertex_settings_are_validated_and_refused_for_other_providers(
    runtime: AgentRuntime,
) -> None:
    assert AgentConfig(project="my-project", location="us-central1").location == "us-central1"
    with pytest.raises(InvalidConfig) as bad_location:
        AgentConfig(location="US Central")
    assert bad_location.value.field == "location"
    with pytest.raises(InvalidConfig, match="Vertex AI setting") as wrong:
        runtime.create_agent(model="openai:gpt-4.1-mini", project="my-project")
    assert wrong.value.field == "project"
    assert "openai" in str(wrong.value)
    with pytest.raises(InvalidConfig, match="anthropic provider has none") as version:
        runtime.create_agent(model="anthropic:claude-sonnet-4-5", api_version="v1")
    assert version.value.field == "api_version"


def test_the_model_is_sent_without_its_prefix_and_the_ledger_names_the_provider(
    runtime: AgentRuntime, recording: Recording
) -> None:
    agent = runtime.create_agent(model="openai:gpt-4.1-mini", name="oai", api_key="sk-1")
    assert agent.chat("hello").text() == "answered gpt-4.1-mini"
    gemini = runtime.create_agent(model="gemini-2.5-flash", name="gem")
    gemini.chat("hello").text()

    assert recording.models == ["gpt-4.1-mini", "gemini-2.5-flash"]
    assert [e.provider for e in recording.endpoints] == ["openai", "gemini"]
    ledger = ledger_frame(runtime.ledger())
    assert ledger[["agent", "provider", "model"]].values.tolist() == [
        ["oai", "openai", "gpt-4.1-mini"],
        ["gem", "gemini", "gemini-2.5-flash"],
    ]
    history = history_frame(agent)
    replies = history[history["role"] == "model"]
    assert replies[["provider", "model"]].values.tolist() == [["openai", "gpt-4.1-mini"]]
    assert history[history["role"] == "user"]["provider"].isna().all()


def test_the_runtime_gemini_key_never_reaches_another_provider(
    runtime: AgentRuntime, recording: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", GEMINI_KEY)
    for model, variable in (
        ("openai:gpt-4.1-mini", "OPENAI_API_KEY"),
        ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
    ):
        with pytest.raises(InvalidConfig, match=variable) as caught:
            runtime.create_agent(model=model)  # its own service, and no key of its own
        assert caught.value.field == "api_key"
        assert GEMINI_KEY not in str(caught.value)
    for settings in (
        {"model": "openai:m", "base_url": "http://127.0.0.1:9/v1"},
        {"model": "anthropic:m", "base_url": "http://127.0.0.1:9"},
        {"model": "ollama:qwen3:4b"},
    ):
        endpoint = endpoint_of(runtime, recording, **settings)
        assert endpoint.api_key is None, settings
        assert GEMINI_KEY not in repr(endpoint)
    gemini = endpoint_of(runtime, recording, model="gemini-2.5-flash")
    assert gemini.api_key == GEMINI_KEY  # the runtime's key is Gemini's


def test_keys_and_hosts_come_from_each_sdks_environment(
    runtime: AgentRuntime, recording: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "europe-west4")

    openai = endpoint_of(runtime, recording, model="openai:gpt-4.1-mini")
    assert (openai.provider, openai.api_key, openai.base_url) == (
        "openai",
        "sk-openai-env",
        "http://127.0.0.1:9/v1",
    )
    anthropic = endpoint_of(runtime, recording, model="anthropic:claude-sonnet-4-5")
    assert (anthropic.provider, anthropic.api_key, anthropic.base_url) == (
        "anthropic",
        "sk-ant-env",
        None,
    )
    vertex = endpoint_of(runtime, recording, model="vertex:gemini-2.5-flash")
    assert (vertex.provider, vertex.project, vertex.location, vertex.api_key) == (
        "vertex",
        "env-project",
        "europe-west4",
        None,
    )
    ollama = endpoint_of(runtime, recording, model="ollama:qwen3:4b")
    assert (ollama.provider, ollama.base_url, ollama.api_key) == ("ollama", OLLAMA_BASE_URL, None)


def test_an_agents_own_settings_win_and_an_environment_key_stays_with_its_host(
    runtime: AgentRuntime, recording: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-env")
    own = endpoint_of(
        runtime, recording, model="openai:m", api_key="sk-own", base_url="http://127.0.0.1:8/v1"
    )
    assert (own.api_key, own.base_url) == ("sk-own", "http://127.0.0.1:8/v1")
    elsewhere = endpoint_of(runtime, recording, model="openai:m", base_url="http://10.0.0.2/v1")
    assert (elsewhere.api_key, elsewhere.base_url) == (None, "http://10.0.0.2/v1")
    vertex = endpoint_of(
        runtime, recording, model="vertex:gemini-2.5-flash", project="p-1", location="us-east1"
    )
    assert (vertex.project, vertex.location) == ("p-1", "us-east1")


def test_a_bad_key_in_the_environment_is_named_by_its_variable_never_shown(
    runtime: AgentRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-SECRET\n")
    with pytest.raises(InvalidConfig, match=r"\$ANTHROPIC_API_KEY") as caught:
        runtime.create_agent(model="anthropic:claude-sonnet-4-5")
    assert "SECRET" not in str(caught.value)


def test_cache_labels_name_provider_and_host() -> None:
    backends = Backends(RuntimeConfig(api_key=GEMINI_KEY, store_path=None))
    url = "http://127.0.0.1:7/v1"
    labels = {
        backends.label(AgentConfig(model=model, base_url=url, api_key="k"))
        for model in ("gemini-2.5-flash", "openai:m", "ollama:m", "anthropic:m")
    }
    assert len(labels) == 4
    assert backends.label(AgentConfig(model="openai:m")) == "openai https://api.openai.com/v1"
    assert backends.label(AgentConfig(model="ollama:m")) == f"ollama {OLLAMA_BASE_URL}"
    assert backends.label(AgentConfig()) == "gemini"  # unchanged for Gemini
    for label in labels:
        assert "k" not in label.split()


def test_a_reply_recorded_on_one_provider_or_host_never_replays_for_another(
    runtime: AgentRuntime, recording: Recording
) -> None:
    here, there = "http://127.0.0.1:7/v1", "http://127.0.0.1:8/v1"
    for model, url in (
        ("openai:same", here),
        ("ollama:same", here),
        ("openai:same", there),
        ("openai:same", here),
    ):
        agent = runtime.create_agent(model=model, base_url=url, api_key="k")
        agent.chat("the same question").text()
    assert recording.models == ["same", "same", "same"]  # the fourth was replayed
    rows = [(e.provider, e.status) for e in runtime.ledger()]
    assert rows == [("openai", "ok"), ("ollama", "ok"), ("openai", "ok"), ("openai", "replayed")]


@pytest.mark.parametrize(("provider", "extra"), [("openai", "openai"), ("anthropic", "anthropic")])
def test_a_missing_sdk_is_one_line_naming_the_extra(
    provider: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, extra, None)  # import of it fails
    monkeypatch.delitem(sys.modules, f"agentrt_jupyter.backends.{extra}", raising=False)
    monkeypatch.delattr(agentrt_jupyter.backends, extra, raising=False)
    with pytest.raises(InvalidConfig) as caught:
        default_backend(Endpoint("k", "http://127.0.0.1:1", provider=provider))
    message = str(caught.value)
    assert f"pip install 'agentrt-jupyter[{extra}]'" in message
    assert "\n" not in message
    refused = pytest.raises(InvalidConfig, match=rf"\[{extra}\] extra")
    with AgentRuntime(RuntimeConfig(store_path=None, backend="scripted")) as rt, refused:
        rt.create_agent(model=f"{provider}:m")  # refused before any turn


def test_vertex_is_google_genai_with_vertexai_and_no_credentials_is_invalid_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    async def make(endpoint: Endpoint) -> bool:
        backend: Any = default_backend(endpoint)
        try:
            return bool(backend.client.vertexai)
        finally:
            await backend.aclose()

    assert asyncio.run(make(Endpoint("express-key", provider="vertex")))
    assert not asyncio.run(make(Endpoint("gemini-key", provider="gemini")))

    def no_credentials(**_: Any) -> Any:
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    with pytest.raises(InvalidConfig, match="credentials were not found") as caught:
        asyncio.run(make(Endpoint(provider="vertex")))
    assert caught.value.field == "project"


def test_the_notebook_accepts_provider_models() -> None:
    from IPython.core.error import UsageError

    from agentrt_jupyter.notebook.magics import AgentMagics

    magics = AgentMagics(shell=None)
    magics.default_model = "anthropic:claude-sonnet-4-5"
    assert magics.default_model == "anthropic:claude-sonnet-4-5"
    options = magics.parse_cell_line("--model openai:gpt-4.1-mini")
    assert options.settings["model"] == "openai:gpt-4.1-mini"
    with pytest.raises(UsageError, match="unknown provider"):
        magics.parse_cell_line("--model mistral:large")


def test_an_environment_key_is_not_sent_to_an_openai_server_at_its_own_base_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("openai")
    backends = pytest.importorskip("agentrt_jupyter.backends.openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-SECRET")

    async def client_key(base_url: str | None) -> str:
        backend = backends.OpenAIBackend(api_key=None, base_url=base_url)
        try:
            return str(backend._client.api_key)
        finally:
            await backend.aclose()

    assert "SECRET" not in asyncio.run(client_key("http://127.0.0.1:9/v1"))
    assert asyncio.run(client_key(None)) == "sk-env-SECRET"  # the SDK's own host


def _end_to_end(runtime: AgentRuntime, server: LocalServer, tag: str, **settings: Any) -> None:
    agent = runtime.create_agent(**settings)
    assert agent.chat(f"{tag}\n@@reply one two three").text() == "one two three"
    [row] = [e for e in runtime.ledger() if e.agent == agent.name]
    provider, model = split_model(settings["model"])
    assert (row.provider, row.model, row.status) == (provider, model, "ok")
    [record] = requests_with(server, tag)
    assert record["body"]["model"] == model


def test_openai_agent_end_to_end_against_the_local_server(server: LocalServer, tag: str) -> None:
    pytest.importorskip("openai")
    pytest.importorskip(
        "agentrt_jupyter.backends.openai", reason="OpenAIBackend (helper oai) not merged yet"
    )
    with AgentRuntime(runtime_config(server)) as runtime:
        _end_to_end(
            runtime,
            server,
            tag,
            model="openai:m",
            base_url=server.openai_base_url,
            api_key=server.token,
        )


def test_anthropic_agent_end_to_end_against_the_local_server(server: LocalServer, tag: str) -> None:
    pytest.importorskip("anthropic")
    pytest.importorskip(
        "agentrt_jupyter.backends.anthropic",
        reason="AnthropicBackend (helper anth) not merged yet",
    )
    with AgentRuntime(runtime_config(server)) as runtime:
        _end_to_end(
            runtime,
            server,
            tag,
            model="anthropic:m",
            base_url=server.anthropic_base_url,
            api_key=server.token,
        )
