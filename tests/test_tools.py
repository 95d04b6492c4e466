"""Our own tool loop: declarations from hints, sync tools off the loop, limits, confirmation."""

from __future__ import annotations

import threading
from enum import Enum
from typing import Literal

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    InvalidConfig,
    ToolCall,
    ToolResult,
    ToolStepLimit,
)
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.tools import as_tool

from .conftest import assert_valid_conversation, requests_with


class Unit(Enum):
    C = "celsius"
    F = "fahrenheit"


def weather(city: str, unit: Unit = Unit.C, days: int | None = None) -> dict:
    """Get the weather forecast for a city.

    Args:
        city: The city name, e.g. "Paris".
        unit: Temperature unit.
        days: How many days ahead.
    """
    return {"city": city, "temperature": 21, "unit": unit}


def test_declarations_come_from_type_hints_and_docstrings() -> None:
    tool = as_tool(weather)
    assert tool.description == "Get the weather forecast for a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": 'The city name, e.g. "Paris".'},
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "description": "Temperature unit.",
            },
            "days": {"type": "integer", "nullable": True, "description": "How many days ahead."},
        },
        "required": ["city"],
    }


def test_bad_tools_are_refused_naming_the_problem() -> None:
    def no_hint(x):  # type: ignore[no-untyped-def]
        """Missing hint."""

    def odd_type(x: complex) -> None:
        """Unsupported type."""

    def star(*args: int) -> None:
        """Star args."""

    with pytest.raises(InvalidConfig, match="'x' needs a type hint"):
        as_tool(no_hint)
    with pytest.raises(InvalidConfig, match="complex"):
        as_tool(odd_type)
    with pytest.raises(InvalidConfig, match=r"\*args"):
        as_tool(star)
    with pytest.raises(InvalidConfig, match="lambda"):
        as_tool(lambda: None)
    with pytest.raises(InvalidConfig, match="not callable"):
        as_tool(42)  # type: ignore[arg-type]


def test_sync_and_async_tools_run_and_are_recorded(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    threads: list[str] = []

    def lookup(query: str) -> str:
        """Look a word up."""
        threads.append(threading.current_thread().name)
        return f"definition of {query}"

    async def count(items: list[str], mode: Literal["fast", "slow"] = "fast") -> int:
        """Count items."""
        return len(items)

    agent = rt.create_agent(tools=[lookup, count])
    handle = agent.chat(
        f'@@call lookup {{"query": "cat"}}\n@@call count {{"items": ["a", "b"]}}\n{tag}'
    )
    text = handle.text(timeout=10)
    assert text == 'Tool results: {"lookup":{"result":"definition of cat"},"count":{"result":2}}'
    assert threads and threads[0] != rt.thread.name
    calls = [e for e in handle if isinstance(e, ToolCall)]
    results = [e for e in handle if isinstance(e, ToolResult)]
    assert [(c.name, c.args) for c in calls] == [
        ("lookup", {"query": "cat"}),
        ("count", {"items": ["a", "b"]}),
    ]
    assert [(r.name, r.result, r.error) for r in results] == [
        ("lookup", "definition of cat", None),
        ("count", 2, None),
    ]
    assert handle.result().tool_calls == 2
    roles = [m.role for m in agent.history()]
    assert roles == ["user", "model", "user", "model"]
    first, second = requests_with(server, tag)
    declared = first["body"]["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in declared] == ["lookup", "count"]
    assert_valid_conversation(second["body"]["contents"])
    assert len(agent.ledger()) == 2 and agent.ledger()[1].call == 1


def test_tool_errors_and_unknown_tools_are_reported_to_the_model(
    rt: AgentRuntime, tag: str
) -> None:
    def broken(x: int) -> int:
        """Always fails."""
        raise ValueError("no luck")

    agent = rt.create_agent(tools=[broken])
    handle = agent.chat(f'@@call broken {{"x": 1}}\n@@call missing {{}}\n{tag}')
    assert "ValueError: no luck" in handle.text(timeout=10)
    errors = [e.error for e in handle if isinstance(e, ToolResult)]
    assert errors[0] == "ValueError: no luck"
    assert errors[1] is not None and "unknown tool 'missing'" in errors[1]


def test_confirm_policy_can_decline_a_call(rt: AgentRuntime, tag: str) -> None:
    asked: list[tuple[str, dict]] = []

    def confirm(name: str, args: dict) -> bool:
        asked.append((name, args))
        return False

    def delete_everything(really: bool) -> str:
        """Dangerous."""
        raise AssertionError("must not run")

    agent = rt.create_agent(tools=[delete_everything], confirm_tool=confirm)
    text = agent.chat(f'@@call delete_everything {{"really": true}}\n{tag}').text(timeout=10)
    assert asked == [("delete_everything", {"really": True})]
    assert "declined" in text


def test_max_tool_steps_stops_the_loop_and_keeps_history_valid(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    def ping() -> str:
        """Ping."""
        return "pong"

    agent = rt.create_agent(tools=[ping], max_tool_steps=2)
    with pytest.raises(ToolStepLimit, match="max_tool_steps=2"):
        agent.chat(f"@@call_always ping {{}}\n{tag}").text(timeout=10)
    assert len(requests_with(server, tag)) == 3
    agent.chat(f"after the loop {tag}").text(timeout=10)
    body = requests_with(server, f"after the loop {tag}")[-1]["body"]
    assert_valid_conversation(body["contents"])


def test_a_confirm_policy_that_raises_is_reported_and_the_tool_not_run(
    rt: AgentRuntime, tag: str
) -> None:
    ran: list[int] = []

    async def confirm(name: str, args: dict) -> bool:
        raise RuntimeError("policy crashed")

    def act(n: int) -> int:
        """Act."""
        ran.append(n)
        return n

    agent = rt.create_agent(tools=[act], confirm_tool=confirm)
    handle = agent.chat(f'@@call act {{"n": 1}}\n{tag}')
    assert "RuntimeError: policy crashed" in handle.text(timeout=10)
    assert ran == []
    assert agent.chat(f"later {tag}").text(timeout=10) == f"Echo: later {tag}"
