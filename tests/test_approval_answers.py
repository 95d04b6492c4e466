"""One rule for every approval path: only `True` runs a call.

`confirm_tool` (sync or async) and `@python`'s `approve` answer the same way (the
notebook's Approve / Deny buttons answer through them); anything but `True` is a
refusal, and an answer that is not a bool is logged once per callable as a likely mistake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    FakeBackend,
    FunctionCallPart,
    FunctionResponsePart,
    RuntimeConfig,
    ToolError,
    ToolResult,
)
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.backends.fake import FakeReply
from agentrt_jupyter.pythontool import python_tool

pytestmark = pytest.mark.timeout(20)

NOT_TRUE = ["deny", "yes", "", 1, 0, 1.0, None, [True], {"approve": True}]
"""Answers that are not `True`, truthy ones first: each is a refusal."""


def call_then_report(request: ModelRequest) -> FakeReply:
    """Asks for `act(n=1)`, then answers with what the call returned."""
    answers = [p for p in request.messages[-1].parts if isinstance(p, FunctionResponsePart)]
    if not answers:
        return FunctionCallPart("act", {"n": 1}, "call-1")
    return f"the call answered {answers[0].response}"


@pytest.fixture
def runtime() -> Iterator[AgentRuntime]:
    with AgentRuntime(
        RuntimeConfig(store_path=None),
        backend_factory=lambda endpoint: FakeBackend(call_then_report),
    ) as running:
        yield running


def odd_answer_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not a bool" in r.getMessage()]


def acting_tool(ran: list[int]) -> Callable[[int], int]:
    def act(n: int) -> int:
        """Act."""
        ran.append(n)
        return n

    return act


def tool_errors(runtime: AgentRuntime, **config: Any) -> list[str | None]:
    agent = runtime.create_agent(**config)
    handle = agent.chat("go")
    errors = [e.error for e in handle if isinstance(e, ToolResult)]
    handle.text(timeout=10)
    return errors


@pytest.mark.parametrize("answer", NOT_TRUE, ids=repr)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_confirm_tool_answer_other_than_true_refuses_the_call(
    runtime: AgentRuntime, answer: Any, kind: str
) -> None:
    ran: list[int] = []
    asked: list[str] = []

    def confirm(name: str, args: dict[str, Any]) -> Any:
        asked.append(name)
        return answer

    async def confirm_async(name: str, args: dict[str, Any]) -> Any:
        return confirm(name, args)

    policy = confirm if kind == "sync" else confirm_async
    errors = tool_errors(runtime, tools=[acting_tool(ran)], confirm_tool=policy)
    assert asked == ["act"]
    assert ran == []
    assert errors == ["the user declined this tool call"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_confirm_tool_answer_of_true_runs_the_call(runtime: AgentRuntime, kind: str) -> None:
    ran: list[int] = []

    async def confirm_async(name: str, args: dict[str, Any]) -> bool:
        return True

    policy = (lambda name, args: True) if kind == "sync" else confirm_async
    assert tool_errors(runtime, tools=[acting_tool(ran)], confirm_tool=policy) == [None]
    assert ran == [1]


def test_a_non_bool_answer_is_reported_once_per_callable_and_false_never(
    runtime: AgentRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []
    tools = [acting_tool(ran)]

    def deny_by_word(name: str, args: dict[str, Any]) -> str:
        return "deny"

    def forgets_to_answer(name: str, args: dict[str, Any]) -> None:
        return None

    with caplog.at_level(logging.WARNING, logger="agentrt_jupyter"):
        for _ in range(2):
            tool_errors(runtime, tools=tools, confirm_tool=deny_by_word)
        assert odd_answer_reports(caplog) == [
            "confirm_tool (test_a_non_bool_answer_is_reported_once_per_callable_and_false_never"
            ".<locals>.deny_by_word) answered 'deny' (a str, not a bool) for a call of 'act': "
            "only True runs a call, so this and every other answer is a refusal; return True "
            "or False (said once per callable)"
        ]
        tool_errors(runtime, tools=tools, confirm_tool=forgets_to_answer)
        assert len(odd_answer_reports(caplog)) == 2
        assert "answered None (a NoneType" in odd_answer_reports(caplog)[1]
        tool_errors(runtime, tools=tools, confirm_tool=lambda name, args: False)
        assert len(odd_answer_reports(caplog)) == 2
    assert ran == []


@pytest.mark.parametrize("answer", NOT_TRUE, ids=repr)
def test_the_python_tool_refuses_the_same_answers(answer: Any) -> None:
    namespace: dict[str, Any] = {}

    def approve(name: str, args: dict[str, Any]) -> Any:
        return answer

    with pytest.raises(ToolError, match="declined"):
        asyncio.run(python_tool(namespace, approve=approve).fn(code="ran = True"))
    assert "ran" not in namespace


def test_the_python_tool_reports_a_non_bool_answer_once(caplog: pytest.LogCaptureFixture) -> None:
    tool = python_tool({}, approve=lambda name, args: "no")
    with caplog.at_level(logging.WARNING, logger="agentrt_jupyter"):
        for _ in range(2):
            with pytest.raises(ToolError, match="declined"):
                asyncio.run(tool.fn(code="1"))
    (report,) = odd_answer_reports(caplog)
    assert report.startswith("python_tool(approve=...) (test_the_python_tool_reports_a_non_bool")
    assert "<lambda>) answered 'no' (a str, not a bool) for a call of 'python'" in report
