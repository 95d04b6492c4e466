"""With no API key the runtime picks the embedded local model, and it really answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt_jupyter import AgentRuntime, InvalidConfig, RuntimeConfig, TextDelta

pytest.importorskip("llama_cpp", reason="needs the [local] extra")
pytestmark = pytest.mark.local_model


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))


@pytest.mark.usefixtures("no_keys")
def test_no_key_means_the_embedded_model_answers_with_real_tokens() -> None:
    config = RuntimeConfig()
    assert config.resolved_backend() == "local"
    assert config.model_for(None) == "smollm2-135m-instruct"
    with AgentRuntime(config) as runtime:
        agent = runtime.create_agent(max_output_tokens=24, temperature=0.0, seed=1)
        handle = agent.chat("Name the capital of France in one word.")
        deltas = [e.text for e in handle if isinstance(e, TextDelta)]
        result = handle.result()
        assert len(deltas) > 1
        assert result.text.strip() and "".join(deltas) == result.text
        assert result.usage.prompt_tokens > 10
        assert 1 < result.usage.candidates_tokens <= 24
        assert runtime.local_server is not None and runtime.local_server.engine == "local"


@pytest.mark.usefixtures("no_keys")
def test_explicit_config_wins_over_the_automatic_choice() -> None:
    assert RuntimeConfig(backend="scripted").resolved_backend() == "scripted"
    with pytest.raises(InvalidConfig, match="api_key"):
        RuntimeConfig(backend="gemini")
    assert RuntimeConfig(api_key="k").resolved_backend() == "gemini"
