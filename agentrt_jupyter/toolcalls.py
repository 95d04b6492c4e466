"""The tools a model asked for, run for one turn: each call confirmed, bounded, contained.

Whatever a tool raises (SystemExit from argparse, KeyboardInterrupt, its own
CancelledError) is that tool's error and becomes its answer to the model; only a cancel
of the turn propagates. Sync tools run on the loop's worker threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .config import AgentConfig
from .content import FunctionCallPart, FunctionResponsePart
from .events import ToolCall, ToolResult
from .handle import Turn
from .tools import Tool, approves


async def answer_calls(
    turn: Turn,
    calls: list[FunctionCallPart],
    config: AgentConfig,
    max_result_chars: int,
    answers: list[FunctionResponsePart],
) -> None:
    """Run each call in order and append its answer to `answers` (kept if cancelled
    midway); a tool's failure is its answer, for the model to read."""
    tools = {t.name: t for t in config.tool_list}
    for call in calls:
        turn.tool_calls += 1
        turn.publish(ToolCall(call.id, call.name, call.args))
        result: Any = None
        error: str | None = None
        tool = tools.get(call.name)
        if tool is None:
            error = f"unknown tool {call.name!r}; available: {sorted(tools)}"
        else:
            result, error = await _outcome(tool, call, config)
        response = (
            {"error": error}
            if error
            else (result if isinstance(result, dict) else {"result": result})
        )
        response = _bounded_response(response, max_result_chars)
        answers.append(FunctionResponsePart(call.name, response, call.id))
        turn.publish(ToolResult(call.id, call.name, result, error))


async def _outcome(
    tool: Tool, call: FunctionCallPart, config: AgentConfig
) -> tuple[Any, str | None]:
    """(result, None) or (None, error text): whatever the tool raises is its own error.

    SystemExit, KeyboardInterrupt, GeneratorExit and a CancelledError the tool raised
    itself are the tool's errors too; only a cancel of this turn propagates.
    """
    confirm = config.confirm_tool
    if confirm is not None:
        answer, problem = await _guarded(confirm, call.name, dict(call.args))
        if problem is not None:
            return None, f"the confirmation policy failed: {problem}"
        if not approves(answer, asker=confirm, role="confirm_tool", tool=call.name):
            return None, "the user declined this tool call"
    limit = config.tool_timeout
    try:
        # Not `wait_for`: on 3.11 it returns the result when the turn is cancelled in the
        # same loop step as the tool answers, and the cancelled turn goes on. The tool runs
        # in its own task: what it raises (even GeneratorExit) is thrown into that task.
        async with asyncio.timeout(limit):
            result, problem = await asyncio.create_task(_guarded(tool.fn, **dict(call.args)))
    except TimeoutError:
        return None, (
            f"the tool did not answer within {limit:g} s (tool_timeout) and was abandoned"
        )
    return (None, problem) if problem is not None else (_jsonable(result), None)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return _safe_repr(value)
    return value


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except BaseException as exc:  # a user's __repr__ may raise anything
        return f"<{type(value).__name__} object (repr failed: {type(exc).__name__})>"


def _bounded_response(response: dict[str, Any], limit: int) -> dict[str, Any]:
    """Keep a tool's response under `limit` characters of JSON, saying so to the model."""
    text = json.dumps(response, default=_safe_repr)
    if len(text) <= limit:
        return response
    return {
        "truncated": f"the result was {len(text):,} characters of JSON; only the first "
        f"{limit:,} are shown",
        "partial_result": text[:limit],
    }


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the tool called exit() or argparse failed"
    try:
        message = str(exc)
    except BaseException:
        message = "(message unavailable)"
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


async def _guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """Run a user's callable (sync on a worker thread, async on the loop) and contain it.

    Returns (value, None) or (None, description of what it raised). A cancel of the
    calling task still propagates; the worker thread of a sync callable is then abandoned
    (it is a daemon thread and its late result is dropped).
    """
    try:
        if asyncio.iscoroutinefunction(fn):
            value = await _own_task(fn(*args, **kwargs))
        else:
            value = await asyncio.to_thread(fn, *args, **kwargs)
            if isinstance(value, Awaitable):
                value = await _own_task(value)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return None, "CancelledError: the tool raised CancelledError itself"
    except BaseException as exc:
        return None, _describe_exception(exc)
    return value, None


async def _own_task(awaitable: Awaitable[Any]) -> Any:
    """Await a user's coroutine in its own task, so whatever it raises stays inside it."""

    async def contained() -> tuple[bool, Any]:
        try:
            return True, await awaitable
        except BaseException as exc:  # SystemExit etc. must not reach the loop
            return False, exc

    task = asyncio.ensure_future(contained())
    try:
        ok, value = await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not ok:
        raise value
    return value
