"""Agents on Vertex AI (`vertex:` models): the real google-genai SDK with `vertexai=True`
over HTTP to the local server's Vertex routes, through the runtime (streaming, ledger,
tools, cancel, quota waits, reply cache).

Express mode sends the key as Gemini's does; project/location mode sends an OAuth
bearer token from google.auth's credentials. Google's auth service cannot run here, so
those tests give google-genai a static token credential (the server's token) through
`google.auth.default`, which is where the SDK looks for application default credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    BackendError,
    TextDelta,
    ToolCall,
    TurnCancelled,
    Waiting,
)
from agentrt_jupyter.server.process import LocalServer

from .conftest import assert_valid_conversation, requests_with, runtime_config, wait_finished

NAME = "gemini-2.5-flash"
MODEL = f"vertex:{NAME}"
PROJECT, LOCATION = "demo-project", "europe-west4"
EXPRESS_PATH = f"/v1beta1/publishers/google/models/{NAME}:streamGenerateContent"
PROJECT_PATH = (
    f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
    f"{NAME}:streamGenerateContent"
)


@pytest.fixture
def runtime(server: LocalServer) -> Iterator[AgentRuntime]:
    made = AgentRuntime(runtime_config(server))
    yield made
    made.shutdown(10.0)


@pytest.fixture
def adc_token(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Application default credentials holding a static token (the server's), as
    google-genai loads them for project/location mode: the service's auth cannot run
    here, so no refresh ever happens."""
    import google.auth
    from google.oauth2.credentials import Credentials

    def default(*args: Any, **kwargs: Any) -> tuple[Credentials, str]:
        return Credentials(token=server.token), PROJECT  # type: ignore[no-untyped-call]

    monkeypatch.setattr(google.auth, "default", default)
    return server.token


def express_agent(runtime: AgentRuntime, server: LocalServer, **settings: Any) -> Any:
    """A `vertex:` agent in express mode (an API key) on the local server."""
    return runtime.create_agent(model=MODEL, base_url=server.url, api_key=server.token, **settings)


def test_text_streams_in_express_mode_with_usage_in_the_ledger(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = express_agent(runtime, server)
    handle = agent.chat(f"@@reply one two three\n{tag}")

    deltas = [e.text for e in handle if isinstance(e, TextDelta)]

    assert handle.text() == "one two three" and len(deltas) > 1
    (entry,) = agent.ledger()
    assert (entry.provider, entry.model, entry.status, entry.finish_reason) == (
        "vertex",
        NAME,
        "ok",
        "STOP",
    )
    assert entry.usage.candidates_tokens == 3 and entry.usage.total_tokens > 3
    (record,) = wait_finished(server, tag)
    assert (record["path"], record["kind"], record["outcome"]) == (
        EXPRESS_PATH,
        "stream",
        "complete",
    )
    assert (record["project"], record["location"], record["api_key_ok"]) == (None, None, True)


def test_project_and_location_mode_sends_them_in_the_path_with_a_bearer_token(
    runtime: AgentRuntime, server: LocalServer, adc_token: str, tag: str
) -> None:
    agent = runtime.create_agent(
        model=MODEL, base_url=server.url, project=PROJECT, location=LOCATION
    )

    assert agent.chat(f"hello {tag}").text(timeout=10) == f"Echo: hello {tag}"
    (record,) = wait_finished(server, tag)
    assert record["path"] == PROJECT_PATH
    assert (record["project"], record["location"], record["api_key_ok"]) == (
        PROJECT,
        LOCATION,
        True,
    )
    assert agent.ledger()[0].provider == "vertex"
    shown = [repr(agent), repr(agent.ledger()), repr(agent.history())]
    assert not any(adc_token in text for text in shown)


def test_a_tool_call_round_trip_runs_the_python_function(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    def lookup(word: str) -> str:
        """Look a word up."""
        return f"{word} is a pet"

    agent = express_agent(runtime, server, tools=[lookup])
    handle = agent.chat(f'@@call lookup {{"word": "cat"}}\n{tag}')

    calls = [e for e in handle if isinstance(e, ToolCall)]

    assert handle.text(timeout=10) == 'Tool results: {"lookup":{"result":"cat is a pet"}}'
    assert [(c.name, c.args) for c in calls] == [("lookup", {"word": "cat"})]
    first, second = (r["body"] for r in requests_with(server, tag))
    [declared] = first["tools"][0]["functionDeclarations"]
    assert declared["name"] == "lookup"
    assert_valid_conversation(second["contents"])
    [answer] = second["contents"][-1]["parts"]
    assert answer["functionResponse"]["response"] == {"result": "cat is a pet"}
    assert [(e.provider, e.status) for e in agent.ledger()] == [("vertex", "ok")] * 2


def test_cancel_mid_stream_closes_the_request(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = express_agent(runtime, server)
    handle = agent.chat(f"@@delay 50\none two three four five six seven eight {tag}")
    first = next(iter(handle))
    assert isinstance(first, TextDelta)

    handle.cancel()

    with pytest.raises(TurnCancelled) as caught:
        handle.text(timeout=10)
    assert caught.value.partial_text.startswith("Echo: ")
    (request,) = wait_finished(server, tag)
    assert (request["path"], request["outcome"]) == (EXPRESS_PATH, "client_closed")
    assert agent.ledger()[-1].status == "cancelled"


def test_a_429_with_retry_info_waits_then_succeeds_one_ledger_row_per_request(
    runtime: AgentRuntime, server: LocalServer, adc_token: str, tag: str
) -> None:
    server.push_faults("429 minute 0.3s", match=tag)
    agent = runtime.create_agent(
        model=MODEL, base_url=server.url, project=PROJECT, location=LOCATION
    )
    handle = agent.chat(f"limited {tag}")

    assert handle.text(timeout=20) == f"Echo: limited {tag}"
    waits = [e for e in handle if isinstance(e, Waiting)]
    assert len(waits) == 1 and 0.25 <= waits[0].seconds < 0.9, (
        waits
    )  # RetryInfo's delay, not a backoff
    ledger = agent.ledger()
    assert [(e.provider, e.status) for e in ledger] == [
        ("vertex", "rate-limited"),
        ("vertex", "ok"),
    ]
    assert ledger[1].retry_wait >= 0.3
    first, second = requests_with(server, tag)
    assert (first["status"], second["status"]) == (429, 200)
    assert first["path"] == second["path"] == PROJECT_PATH
    assert second["received"] - first["received"] >= 0.3


def test_the_reply_cache_replays_a_second_identical_turn_without_a_request(
    server: LocalServer, tag: str
) -> None:
    with AgentRuntime(runtime_config(server, reply_cache=True)) as runtime:
        live = express_agent(runtime, server).chat(f"one two three {tag}")
        assert live.text(timeout=10) == f"Echo: one two three {tag}"
        second = express_agent(runtime, server)
        replay = second.chat(f"one two three {tag}")

        assert replay.text(timeout=10) == live.text()
        assert len(requests_with(server, tag)) == 1
        (row,) = second.ledger()
        assert (row.provider, row.status) == ("vertex", "replayed")
        assert replay.result().replayed


def test_a_wrong_key_is_refused_and_never_shown(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    secret = "AIza-wrong-vertex-key-0123456789"
    agent = runtime.create_agent(model=MODEL, base_url=server.url, api_key=secret)

    with pytest.raises(BackendError) as caught:
        agent.chat(f"hi {tag}").text(timeout=10)

    assert caught.value.code == 400
    shown = [str(caught.value), repr(caught.value), repr(agent), repr(agent.ledger())]
    assert not any(secret in text for text in shown)


def test_count_tokens_and_generate_answer_on_the_v1_routes(server: LocalServer, tag: str) -> None:
    from google import genai

    with genai.Client(
        vertexai=True,
        api_key=server.token,
        http_options={"base_url": server.url, "api_version": "v1"},
    ) as client:
        counted = client.models.count_tokens(model=NAME, contents=f"one two {tag}")
        reply = client.models.generate_content(model=NAME, contents=f"one two {tag}")

    assert counted.total_tokens == 3
    assert reply.text == f"Echo: one two {tag}"
    paths = [r["path"] for r in requests_with(server, tag)]
    assert paths == [
        f"/v1/publishers/google/models/{NAME}:{m}" for m in ("countTokens", "generateContent")
    ]
