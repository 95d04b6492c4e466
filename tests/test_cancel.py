"""Cancel at every point leaves the socket closed and the next request a valid conversation."""

from __future__ import annotations

import _thread
import signal
import threading

import pytest

from agentrt_jupyter import AgentRuntime, TextDelta, ToolCall, TurnCancelled
from agentrt_jupyter.server.process import LocalServer

from .conftest import assert_valid_conversation, requests_with, wait_finished, wait_for_tagged


def next_turn_is_valid(agent, server: LocalServer, tag: str) -> dict:
    """The agent takes another turn; returns the request body it sent."""
    assert agent.chat(f"next turn {tag}").text(timeout=10) == f"Echo: next turn {tag}"
    body = requests_with(server, f"next turn {tag}")[-1]["body"]
    assert_valid_conversation(body["contents"])
    return body


def test_cancel_before_the_first_chunk_closes_the_socket(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@fault hang_headers\nwaiting {tag}")
    request = wait_for_tagged(server, tag)
    handle.cancel()
    with pytest.raises(TurnCancelled) as caught:
        handle.text(timeout=10)
    assert caught.value.partial_text == ""
    assert server.wait_for_request(request["id"])["outcome"] == "client_closed"
    history = agent.history()
    assert [m.role for m in history] == ["user"]
    assert agent.ledger()[-1].status == "cancelled"
    body = next_turn_is_valid(agent, server, tag)
    assert [c["role"] for c in body["contents"]] == ["user"]
    assert len(body["contents"][0]["parts"]) == 2


def test_cancel_mid_text_keeps_the_partial_reply_marked_cancelled(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@delay 50\none two three four five six seven eight {tag}")
    events = iter(handle)
    first = next(events)
    assert isinstance(first, TextDelta)
    handle.cancel()
    with pytest.raises(TurnCancelled) as caught:
        handle.text(timeout=10)
    partial = caught.value.partial_text
    assert partial.startswith("Echo: ")
    assert len(partial) < len(f"Echo: one two three four five six seven eight {tag}")
    (request,) = wait_finished(server, tag)
    assert request["outcome"] == "client_closed"
    model = agent.history()[-1]
    assert model.role == "model" and model.status == "cancelled" and model.text == partial
    body = next_turn_is_valid(agent, server, tag)
    assert body["contents"][1] == {"role": "model", "parts": [{"text": partial}]}


def test_cancel_while_a_tool_call_awaits_confirmation(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    asked = threading.Event()
    release = threading.Event()

    def confirm(name: str, args: dict) -> bool:
        asked.set()
        release.wait(10)
        return True

    def lookup(query: str) -> str:
        """Look something up."""
        return "found"

    agent = rt.create_agent(tools=[lookup], confirm_tool=confirm)
    handle = agent.chat(f'@@call lookup {{"query": "x"}}\n{tag}')
    assert asked.wait(10)
    handle.cancel()
    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    release.set()
    history = agent.history()
    assert [m.role for m in history] == ["user", "model", "user"]
    assert history[-1].status == "cancelled"
    assert history[-1].parts[0].response == {"error": "cancelled by the user"}
    body = next_turn_is_valid(agent, server, tag)
    roles = [c["role"] for c in body["contents"]]
    assert roles == ["user", "model", "user"]


def test_cancel_during_a_tool_run_answers_the_dangling_call(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    running = threading.Event()
    release = threading.Event()

    def slow_tool(seconds: int) -> int:
        """A tool that takes a while."""
        running.set()
        release.wait(10)
        return seconds

    agent = rt.create_agent(tools=[slow_tool])
    handle = agent.chat(f'@@call slow_tool {{"seconds": 3}}\n{tag}')
    assert running.wait(10)
    handle.cancel()
    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    release.set()
    calls = [e for e in handle if isinstance(e, ToolCall)]
    assert [c.name for c in calls] == ["slow_tool"]
    assert agent.history()[-1].parts[0].response == {"error": "cancelled by the user"}
    next_turn_is_valid(agent, server, tag)


def test_cancel_mid_tool_loop_after_results_keeps_them(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    agent = rt.create_agent(tools=[add])
    handle = agent.chat(f'@@call add {{"a": 1, "b": 2}}\n@@delay 200\n{tag}')
    for event in handle:
        if isinstance(event, TextDelta):
            handle.cancel()
            break
    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    roles = [(m.role, m.status) for m in agent.history()]
    assert roles[:3] == [("user", "complete"), ("model", "complete"), ("user", "complete")]
    assert roles[3] == ("model", "cancelled")
    next_turn_is_valid(agent, server, tag)


def test_cancel_with_no_running_turn_is_harmless(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    assert agent.cancel() is False
    assert agent.chat(f"still fine {tag}").text() == f"Echo: still fine {tag}"


def test_cancelling_a_queued_turn_skips_it_and_later_turns_run(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    first = agent.chat(f"@@fault hang\n{tag}")
    queued = agent.chat(f"queued {tag}")
    last = agent.chat(f"last {tag}")
    queued.cancel()
    with pytest.raises(TurnCancelled):
        queued.text(timeout=10)
    first.cancel()
    assert last.text(timeout=10) == f"Echo: last {tag}"
    users = [m.text for m in agent.history() if m.role == "user"]
    assert f"queued {tag}" not in users


def test_keyboard_interrupt_while_waiting_cancels_the_turn(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@fault hang\n{tag}")
    wait_for_tagged(server, tag)
    # A run started in the background by a shell (nohup, `&`) inherits SIGINT ignored,
    # and Python then leaves it so: Ctrl-C is Python's default handler here, as at a prompt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            handle.text(timeout=10)
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    (request,) = wait_finished(server, tag)
    assert request["outcome"] == "client_closed"
