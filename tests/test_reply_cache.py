"""The reply cache: an identical request replays its recorded reply (streamed, nothing
billed, marked replayed); anything that changes the request goes live. And a streaming
reply survives `kill -9` of its process up to the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentrt_jupyter import AgentRuntime, ConversationInUse, TextDelta, TurnStoreError
from agentrt_jupyter.server.process import LocalServer

from .conftest import assert_valid_conversation, requests_with, runtime_config, wait_for_tagged


def test_an_identical_request_replays_without_calling_the_model(
    server: LocalServer, tag: str
) -> None:
    with AgentRuntime(runtime_config(server, reply_cache=True)) as runtime:
        first = runtime.create_agent(system_instruction="Be brief.")
        live = first.chat(f"one two three {tag}")
        assert live.text(timeout=10) == f"Echo: one two three {tag}"
        second = runtime.create_agent(system_instruction="Be brief.")
        replay = second.chat(f"one two three {tag}")
        assert replay.text(timeout=10) == live.text()
        deltas = [e.text for e in replay if isinstance(e, TextDelta)]
        assert len(deltas) > 1  # streamed, not dumped in one piece
        assert len(requests_with(server, tag)) == 1
        (row,) = second.ledger()
        assert row.status == "replayed"
        assert row.saved_tokens == first.ledger()[0].usage.total_tokens > 0
        assert second.total_usage().total_tokens == 0
        result = replay.result()
        assert result.replayed and result.saved_tokens == row.saved_tokens
        assert runtime.cache_stats()["hits"] >= 1


@pytest.mark.parametrize(
    "change",
    [
        {"system_instruction": "Be long."},
        {"temperature": 0.5},
        {"model": "gemini-2.5-pro"},
        {"stop_sequences": ["zzz"]},
    ],
)
def test_anything_that_changes_the_request_goes_live(
    server: LocalServer, tag: str, change: dict
) -> None:
    with AgentRuntime(runtime_config(server, reply_cache=True)) as runtime:
        runtime.create_agent(system_instruction="Be brief.").chat(f"same {tag}").text(timeout=10)
        settings = {"system_instruction": "Be brief.", **change}
        runtime.create_agent(**settings).chat(f"same {tag}").text(timeout=10)
        assert len(requests_with(server, tag)) == 2


def test_refresh_and_the_default_off_call_the_model(server: LocalServer, tag: str) -> None:
    with AgentRuntime(runtime_config(server, reply_cache=True)) as runtime:
        runtime.create_agent().chat(f"again {tag}").text(timeout=10)
        runtime.create_agent().chat(f"again {tag}", refresh=True).text(timeout=10)
        runtime.create_agent(reply_cache=False).chat(f"again {tag}").text(timeout=10)
    with AgentRuntime(runtime_config(server)) as runtime:  # off unless asked for
        runtime.create_agent().chat(f"again {tag}").text(timeout=10)
    assert len(requests_with(server, tag)) == 4


def test_tool_calls_replay_only_while_tool_results_are_identical(
    server: LocalServer, tag: str
) -> None:
    answers = ["sunny", "sunny", "rain"]

    def forecast(city: str) -> str:
        """The forecast for a city."""
        return answers.pop(0)

    with AgentRuntime(runtime_config(server, reply_cache=True)) as runtime:
        prompt = f'@@call forecast {{"city": "Oslo"}}\n{tag}'
        live = runtime.create_agent(tools=[forecast]).chat(prompt).text(timeout=10)
        assert len(requests_with(server, tag)) == 2  # the call, then the answer
        same = runtime.create_agent(tools=[forecast]).chat(prompt).text(timeout=10)
        assert same == live and len(requests_with(server, tag)) == 2  # tool re-ran: sunny
        changed = runtime.create_agent(tools=[forecast]).chat(prompt)
        assert "rain" in changed.text(timeout=10)
        assert len(requests_with(server, tag)) == 3  # first call replayed, answer live
        assert [e.status for e in runtime.agent_ledger(changed.agent)] == ["replayed", "ok"]


def test_a_new_runtime_on_the_same_store_replays_a_whole_conversation(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    prompts = [f"first {tag}", f"second {tag}", f"third {tag}"]
    with AgentRuntime(runtime_config(server, store_path=store_path, reply_cache=True)) as rt:
        agent = rt.create_agent(name="notes")
        texts = [agent.chat(p).text(timeout=10) for p in prompts]
    assert len(requests_with(server, tag)) == 3
    with AgentRuntime(runtime_config(server, store_path=store_path, reply_cache=True)) as rt:
        agent = rt.create_agent(name="notes", fresh=True)  # as a restarted kernel does
        assert [agent.chat(p).text(timeout=10) for p in prompts] == texts
        assert len(requests_with(server, tag)) == 3
        edited = agent.chat(f"fourth, new {tag}").text(timeout=10)
        assert edited == f"Echo: fourth, new {tag}"
        assert len(requests_with(server, tag)) == 4


CRASHING_WRITER = """
import sys
from agentrt_jupyter import AgentRuntime, RuntimeConfig
runtime = AgentRuntime(RuntimeConfig(base_url=sys.argv[1], api_key=sys.argv[2],
    api_version="v1beta", store_path=sys.argv[3]))
agent = runtime.create_agent(name="crashy")
agent.chat("done before the crash " + sys.argv[4]).text(timeout=10)
handle = agent.chat("@@delay 100\\n" + " ".join(f"w{i}" for i in range(400)) + " " + sys.argv[4])
for event in handle:
    if getattr(event, "text", "").startswith("w30"):
        print("streaming", flush=True)
        break
handle.result(timeout=60)
"""


@pytest.mark.slow
def test_kill_9_mid_stream_keeps_every_message_and_the_checkpointed_partial(
    server: LocalServer, store_path: Path, tag: str, tmp_path: Path
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(CRASHING_WRITER))
    args = [sys.executable, str(script), server.url, server.token, str(store_path), tag]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "streaming"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        agent = runtime.resume("crashy")  # the dead writer's lease is taken over at once
        history = agent.history()
        assert [m.role for m in history] == ["user", "model", "user", "model"]
        assert history[1].text == f"Echo: done before the crash {tag}"
        partial = history[3]
        assert partial.status == "incomplete"
        words = partial.text.split()
        assert words[:2] == ["Echo:", "w0"] and len(words) >= 20  # at most ~1 s was lost
        agent.chat(f"after the crash {tag}").text(timeout=10)
        request = wait_for_tagged(server, f"after the crash {tag}")
        assert_valid_conversation(request["body"]["contents"])
        texts = [p.get("text", "") for c in request["body"]["contents"] for p in c["parts"]]
        assert texts.count(f"done before the crash {tag}") == 1  # nothing doubled
        assert any(t.startswith("Echo: w0 w1") for t in texts)  # the partial reply is sent


def test_resume_keeps_the_stored_settings_under_overrides(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        runtime.create_agent(name="tuned", system_instruction="Be terse.").disconnect()
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        agent = runtime.resume("tuned", temperature=0.3)
        agent.chat(f"settings {tag}").text(timeout=10)
    body = requests_with(server, tag)[-1]["body"]
    assert body["systemInstruction"]["parts"][0]["text"] == "Be terse."
    assert body["generationConfig"]["temperature"] == 0.3


def test_an_agent_whose_conversation_was_taken_over_stops_rather_than_write_unstored(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    first = AgentRuntime(runtime_config(server, store_path=store_path))
    second = AgentRuntime(runtime_config(server, store_path=store_path))
    try:
        mine = first.create_agent(name="shared")
        mine.chat(f"mine {tag}").text(timeout=10)
        mine.disconnect()
        mine = first.resume("shared")
        with pytest.raises(ConversationInUse):
            second.resume("shared")
        theirs = second.resume("shared", take_over=True)
        with pytest.raises(TurnStoreError) as caught:
            mine.chat(f"after the take-over {tag}").text(timeout=10)
        assert isinstance(caught.value.cause, ConversationInUse)
        with pytest.raises(ConversationInUse):
            mine.chat(f"still refused {tag}")
        theirs.chat(f"theirs {tag}").text(timeout=10)
        texts = [m.text for m in theirs.history()]
        assert f"Echo: mine {tag}" in texts and f"Echo: theirs {tag}" in texts
    finally:
        first.shutdown()
        second.shutdown()
