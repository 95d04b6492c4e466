"""The runtime thread, the command channel, and the agent API, through the real SDK."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter import (
    AgentConfig,
    AgentNotFound,
    AgentRuntime,
    AgentShutDown,
    ConversationExists,
    InvalidConfig,
    RuntimeClosed,
    RuntimeConfig,
    TextDelta,
    Timeout,
    TurnEnd,
    UsageUpdate,
)
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config


def test_runtime_starts_a_named_daemon_thread_and_returns_at_once(server: LocalServer) -> None:
    runtime = AgentRuntime(runtime_config(server, thread_name="agentrt-test"))
    try:
        assert runtime.thread.is_alive()
        assert runtime.thread.daemon
        assert runtime.thread.name.startswith("agentrt-test")
        assert runtime.loop.is_running()
    finally:
        runtime.shutdown()
    assert not runtime.thread.is_alive()


def test_two_runtimes_in_one_process_work_independently(server: LocalServer, tag: str) -> None:
    with (
        AgentRuntime(runtime_config(server)) as first,
        AgentRuntime(runtime_config(server)) as second,
    ):
        assert first.thread is not second.thread
        a = first.create_agent()
        b = second.create_agent()
        assert a.chat(f"one {tag}").text() == f"Echo: one {tag}"
        assert b.chat(f"two {tag}").text() == f"Echo: two {tag}"
        with pytest.raises(AgentNotFound):
            first.history(b.id)


def test_chat_streams_typed_events_then_text_and_usage(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"hello streaming world {tag}")
    events = list(handle)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 5
    assert "".join(deltas) == f"Echo: hello streaming world {tag}"
    assert isinstance(events[-1], TurnEnd) and events[-1].status == "complete"
    assert any(isinstance(e, UsageUpdate) for e in events)
    result = handle.result()
    assert result.text == f"Echo: hello streaming world {tag}"
    assert result.usage.candidates_tokens == 5
    assert result.usage.prompt_tokens == 4
    assert result.finish_reason == "STOP"
    assert handle.usage == result.usage
    assert handle.status == "complete"
    assert handle.turn == result.turn == 1


def test_events_published_before_subscribing_are_not_lost(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"late subscriber {tag}")
    handle.result()
    assert (
        "".join(e.text for e in handle if isinstance(e, TextDelta))
        == f"Echo: late subscriber {tag}"
    )


def test_async_twins_stream_and_answer_from_another_event_loop(rt: AgentRuntime, tag: str) -> None:
    async def main() -> tuple[str, list[str], int]:
        agent = await rt.aio.create_agent(name=f"async-{tag}")
        handle = await rt.aio.chat(agent, f"async hello {tag}")
        pieces = [e.text async for e in handle if isinstance(e, TextDelta)]
        text = await handle.atext()
        count = await rt.aio.turn_count(agent)
        return text, pieces, count

    text, pieces, count = asyncio.run(main())
    assert text == f"Echo: async hello {tag}" == "".join(pieces)
    assert count == 1


def test_queries_answer_while_a_turn_streams(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@delay 100\n@@chunks 30\nslow reply {tag}")
    first = next(iter(handle))
    assert isinstance(first, TextDelta)
    assert not agent.is_idle()
    assert agent.turn_count() == 1
    assert [m.role for m in agent.history()] == ["user"]
    assert not handle.done
    handle.cancel()
    assert handle.outcome() is None or handle.outcome().status == "cancelled"


def test_turns_of_one_agent_run_in_order(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    handles = [agent.send(f"@@delay 5\nmessage {i} {tag}") for i in range(5)]
    agent.wait_for_idle(timeout=30)
    assert [h.text() for h in handles] == [f"Echo: message {i} {tag}" for i in range(5)]
    users = [m.text for m in agent.history() if m.role == "user"]
    assert users == [f"@@delay 5\nmessage {i} {tag}" for i in range(5)]
    assert agent.turn_count() == 5


def test_different_agents_run_concurrently(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    stuck = rt.create_agent()
    quick = rt.create_agent()
    hanging = stuck.chat(f"@@fault hang\n{tag}")
    assert quick.chat(f"meanwhile {tag}").text(timeout=10) == f"Echo: meanwhile {tag}"
    assert not hanging.done
    hanging.cancel()
    with pytest.raises(Exception, match="cancelled"):
        hanging.text(timeout=10)


def test_send_replies_reach_history(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    agent.send(f"fire and forget {tag}")
    agent.wait_for_idle(timeout=10)
    assert agent.last_response() == f"Echo: fire and forget {tag}"
    message = agent.last_message()
    assert message is not None and message.role == "model" and message.text == agent.last_response()
    assert [m.role for m in agent.history()] == ["user", "model"]


def test_wait_for_idle_is_bounded_by_its_timeout(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@fault hang\n{tag}")
    with pytest.raises(Timeout):
        agent.wait_for_idle(timeout=0.2)
    assert not agent.is_idle()
    handle.cancel()
    agent.wait_for_idle(timeout=10)
    assert agent.is_idle()


def test_signal_idle_then_wait_for_wakeup(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    agent.signal_idle()
    assert agent.wait_for_wakeup(timeout=0.05) is False
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(agent.wait_for_wakeup(timeout=10)))
    waiter.start()
    agent.send(f"wake up {tag}")
    waiter.join(10)
    assert woke == [True]
    agent.wait_for_idle(timeout=10)
    agent.signal_idle()
    assert agent.wait_for_wakeup(timeout=0.05) is False


def test_clear_history_changes_what_the_model_sees_and_keeps_billed_usage(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    agent.chat(f"remember the number 42 {tag}").text()
    billed = agent.total_usage()
    agent.clear_history()
    assert agent.history() == []
    assert agent.turn_count() == 0
    assert agent.total_usage() == billed
    agent.chat(f"after clearing {tag}").text()
    last = requests_with(server, f"after clearing {tag}")[-1]
    assert last["body"]["contents"] == [
        {"role": "user", "parts": [{"text": f"after clearing {tag}"}]}
    ]
    assert agent.turn_count() == 1
    assert agent.total_usage().total_tokens > billed.total_tokens


def test_usage_is_counted_once_per_call_and_summed_per_turn(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    agent.chat(f"@@chunks 7\nfirst turn here {tag}").text()
    first = agent.last_turn_usage()
    agent.chat(f"second {tag}").text()
    second = agent.last_turn_usage()
    ledger = agent.ledger()
    assert len(ledger) == 2
    assert [e.status for e in ledger] == ["ok", "ok"]
    assert first.candidates_tokens == 5
    assert agent.total_usage() == first + second
    assert ledger[0].time_to_first_chunk is not None
    assert ledger[0].duration >= ledger[0].time_to_first_chunk


def test_compaction_summarises_older_turns_past_the_threshold(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(compaction_threshold=64, system_instruction="Be brief.")
    long_text = " ".join(f"word{i}" for i in range(70))
    agent.chat(f"{long_text} {tag}").text()
    assert agent.compaction_indices() == []
    agent.chat(f"next question {tag}").text()
    indices = agent.compaction_indices()
    assert len(indices) == 1
    history = agent.history()
    assert history[indices[0]].role == "summary"
    assert history[indices[0]].text.startswith("Echo: ")
    request = requests_with(server, f"next question {tag}")[-1]["body"]
    assert len(request["contents"]) == 1
    system = request["systemInstruction"]["parts"][0]["text"]
    assert system.startswith("Be brief.") and "Summary of the earlier conversation" in system
    assert [e.call for e in agent.ledger()] == [0, -1, 0]


def test_shutdown_agent_refuses_new_turns_and_keeps_history(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    agent.chat(f"before shutdown {tag}").text()
    agent.shutdown()
    with pytest.raises(AgentShutDown):
        agent.chat("after")
    assert len(agent.history()) == 2


def test_try_shutdown_agent_never_raises_or_waits(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@fault hang\n{tag}")
    assert agent.try_shutdown() is True
    assert rt.try_shutdown_agent("no-such-agent") is True
    with pytest.raises(Exception, match="cancelled"):
        handle.text(timeout=10)
    rt.shutdown()
    assert rt.try_shutdown_agent(agent) is False


def test_disconnect_then_resume_continues_the_stored_conversation(
    server: LocalServer, store_path, tag: str
) -> None:
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        agent = runtime.create_agent(name="keeper", system_instruction="Stay.")
        agent.chat(f"first {tag}").text()
        agent.disconnect()
        with pytest.raises(AgentShutDown):
            agent.chat("no")
    with AgentRuntime(runtime_config(server, store_path=store_path)) as restarted:
        assert restarted.stored_conversations() == ["keeper"]
        with pytest.raises(ConversationExists):
            restarted.create_agent(name="keeper")
        agent = restarted.resume("keeper")
        assert [m.role for m in agent.history()] == ["user", "model"]
        assert agent.turn_count() == 1
        agent.chat(f"second {tag}").text()
        body = requests_with(server, f"second {tag}")[-1]["body"]
        assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
        assert body["systemInstruction"]["parts"][0]["text"] == "Stay."
        assert len(agent.ledger()) == 2
        agent.delete()
        with pytest.raises(AgentNotFound):
            restarted.resume("keeper")


def test_delete_erases_a_stored_conversation_by_name(server: LocalServer, store_path) -> None:
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        runtime.create_agent(name="gone").disconnect()
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        runtime.delete("gone")
        assert runtime.stored_conversations() == []
        with pytest.raises(AgentNotFound):
            runtime.delete("gone")


def test_unknown_agents_and_calls_after_shutdown_are_typed_errors(server: LocalServer) -> None:
    runtime = AgentRuntime(runtime_config(server))
    with pytest.raises(AgentNotFound, match="no agent 'ghost'"):
        runtime.chat("ghost", "hi")
    with pytest.raises(AgentNotFound):
        runtime.history("ghost")
    with pytest.raises(InvalidConfig, match="temperature"):
        runtime.create_agent(temperature=5)
    with pytest.raises(InvalidConfig, match="config"):
        runtime.create_agent("not a config")  # type: ignore[arg-type]
    runtime.shutdown()
    runtime.shutdown()
    with pytest.raises(RuntimeClosed):
        runtime.create_agent()
    with pytest.raises(RuntimeClosed):
        runtime.history("ghost")


def test_a_name_in_use_is_refused(rt: AgentRuntime) -> None:
    rt.create_agent(name="twin")
    with pytest.raises(InvalidConfig, match="name"):
        rt.create_agent(name="twin")


def test_blocking_call_from_the_runtime_thread_is_refused(rt: AgentRuntime) -> None:
    agent = rt.create_agent()

    async def from_loop() -> str:
        try:
            rt.history(agent)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    message = asyncio.run_coroutine_threadsafe(from_loop(), rt.loop).result(5)
    assert "deadlock" in message


def test_async_api_works_from_the_runtime_loop_itself(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()

    async def nested() -> str:
        handle = await rt.aio.chat(agent, f"nested {tag}")
        return await handle.atext()

    assert asyncio.run_coroutine_threadsafe(nested(), rt.loop).result(10) == f"Echo: nested {tag}"


def test_shutdown_from_a_context_manager_and_a_finalizer(server: LocalServer) -> None:
    with AgentRuntime(runtime_config(server)) as runtime:
        thread = runtime.thread
    assert not thread.is_alive()
    forgotten = AgentRuntime(runtime_config(server))
    thread = forgotten.thread
    del forgotten
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


def test_shutdown_is_bounded_and_idempotent(rt: AgentRuntime, tag: str) -> None:
    agents = [rt.create_agent() for _ in range(5)]
    handles = [a.chat(f"@@fault hang\n{tag}") for a in agents]
    rt.shutdown(timeout=10)  # raises Timeout past it
    assert all(h.done and h.status == "cancelled" for h in handles)
    rt.shutdown(timeout=10)


def test_runtime_starts_its_own_local_server_and_stops_it_with_itself(tag: str) -> None:
    with AgentRuntime(RuntimeConfig(backend="scripted", store_path=None)) as runtime:
        assert runtime.local_server is None
        agent = runtime.create_agent()
        assert agent.chat(f"own server {tag}").text(timeout=60) == f"Echo: own server {tag}"
        server = runtime.local_server
        assert server is not None and server.running
        assert server.url.startswith("http://127.0.0.1:")
    assert not server.running


def test_resume_with_new_settings_stores_them(server: LocalServer, store_path, tag: str) -> None:
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        runtime.create_agent(name="tuned", model="model-one").disconnect()
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        runtime.resume("tuned", AgentConfig(model="model-two")).disconnect()
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        agent = runtime.resume("tuned")
        agent.chat(f"which model {tag}").text(timeout=10)
        assert requests_with(server, tag)[-1]["model"] == "model-two"


def test_the_local_server_does_not_share_our_process_group() -> None:
    """A kernel interrupt signals the kernel's process group; the server must survive it."""
    with LocalServer.start("scripted") as own:
        assert os.getpgid(own.pid) != os.getpgid(0)


def test_the_runtime_ledger_keeps_the_calls_of_agents_that_are_gone(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    """A deleted agent's calls were paid for: its rows stay in `runtime.ledger()`, as do a
    map's (whose per-row agents are deleted as each row ends)."""
    import pandas as pd

    before = len(rt.ledger())
    gone = rt.create_agent()
    gone.chat(f"one {tag}").text(timeout=10)
    gone.delete()
    assert len(rt.ledger()) == before + 1
    rt.map(pd.DataFrame({"word": ["a", "b", "c"]}), "{word} " + tag)
    rows = rt.ledger()[before:]
    assert len(requests_with(server, tag)) == len(rows) == 4
    assert [e.status for e in rows] == ["ok"] * 4


def test_the_sdk_session_follows_a_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a proxy or netrc, aiohttp's per-request environment lookups are off (each
    one a hop through the executor); with either, the SDK's own session follows them."""
    from agentrt_jupyter.backends.gemini import GeminiBackend

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))

    async def session_of() -> Any:
        backend = GeminiBackend(api_key="k", base_url="http://127.0.0.1:9", api_version="v1")
        session = backend._session
        await backend.aclose()
        return session

    plain = asyncio.run(session_of())
    assert plain is not None and plain.trust_env is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert asyncio.run(session_of()) is None


def test_a_backend_that_cannot_be_made_leaves_no_open_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentrt_jupyter.backends.gemini import GeminiBackend

    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    complaints: list[str] = []

    async def make() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: complaints.append(str(context.get("message")))
        )
        with pytest.raises(ValueError, match="API key"):
            GeminiBackend(api_key=None, base_url="http://127.0.0.1:9", api_version="v1")
        gc.collect()  # an unclosed aiohttp session complains when collected

    asyncio.run(make())
    assert complaints == []
