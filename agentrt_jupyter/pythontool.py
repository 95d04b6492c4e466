"""`@python`: the model runs Python code in the notebook's namespace, only once approved.

Approval is part of the tool, not a setting beside it: `python_tool` cannot be built
without an `approve(name, args)` callable (the same signature as
`AgentConfig.confirm_tool`), and the tool awaits it before every run, with the code in
`args["code"]`. Only an answer of exactly `True` runs the code; anything else, an
exception from `approve` included, is a refusal the model is told about (the rule of
every approval path: `tools.approves`). So no agent configuration, however it was put
together, runs model-written code unasked. The tool is marked `requires_approval=True`,
so a per-call confirm policy can skip it instead of asking twice.

The code runs on a worker thread like any sync tool, with its stdout and stderr captured
(output of other threads still goes where it went). The time spent waiting for approval
counts against `AgentConfig.tool_timeout`. A turn cancelled while the code runs abandons
the thread: the code may still finish, and change the namespace, afterwards.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import inspect
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any, TextIO

from .config import ConfirmTool
from .errors import InvalidConfig, ToolError
from .tools import Tool, approves, as_tool

FILENAME = "<agent python>"


def python_tool(
    namespace: dict[str, Any], *, approve: ConfirmTool, max_chars: int = 10_000
) -> Tool:
    """The `python` tool over `namespace`; `approve("python", {"code": ...})` gates each run.

    `max_chars` bounds the returned repr and each of stdout and stderr.
    """
    if not isinstance(namespace, dict):
        raise InvalidConfig(
            f"the namespace must be a dict (code runs in it), got {type(namespace).__name__}",
            field="tools",
        )
    if not callable(approve):
        raise InvalidConfig(
            "the python tool runs only behind approval: pass approve=callable(name, args)",
            field="confirm_tool",
        )
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 100:
        raise InvalidConfig("must be an integer of at least 100", field="max_chars")

    async def python(code: str) -> dict[str, Any]:
        """Run Python code in the notebook's namespace; the user approves each run first.

        Returns the repr of the last expression's value and what the code printed.

        Args:
            code: The Python code to run (statements; a last expression is its result).
        """
        if not isinstance(code, str) or not code.strip():
            raise ToolError("code must be a non-empty string of Python")
        if not await _approved(approve, code):
            raise ToolError("the user declined to run this code")
        return await asyncio.to_thread(_run, namespace, code, max_chars)

    return dataclasses.replace(as_tool(python), requires_approval=True)


async def _approved(approve: ConfirmTool, code: str) -> bool:
    """True only if `approve` answers exactly True; what it raises is a refusal."""
    try:
        if inspect.iscoroutinefunction(approve):
            answer = await approve("python", {"code": code})
        else:
            answer = await asyncio.to_thread(approve, "python", {"code": code})
            if inspect.isawaitable(answer):
                answer = await answer
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise ToolError(f"asking for approval failed ({type(exc).__name__}); not run") from None
    return approves(answer, asker=approve, role="python_tool(approve=...)", tool="python")


def _run(namespace: dict[str, Any], code: str, max_chars: int) -> dict[str, Any]:
    try:
        tree = ast.parse(code, FILENAME, "exec")
    except SyntaxError as exc:
        raise ToolError(f"SyntaxError: {exc.msg} (line {exc.lineno})") from None
    last: ast.Expression | None = None
    if tree.body and isinstance(final := tree.body[-1], ast.Expr):
        tree.body.pop()
        last = ast.Expression(final.value)
    value: Any = None
    failure: BaseException | None = None
    with _captured(max_chars) as (out, err):
        try:
            exec(compile(tree, FILENAME, "exec"), namespace)
            if last is not None:
                value = eval(compile(last, FILENAME, "eval"), namespace)
        except BaseException as exc:  # exit(), KeyboardInterrupt: the code's own failure
            failure = exc
    result: dict[str, Any] = {}
    if failure is not None:
        frames = failure.__traceback__
        own = frames.tb_next if frames is not None else None  # leave out this module's frame
        lines = traceback.format_exception(type(failure), failure, own)
        result["error"] = _bounded("".join(lines), max_chars)
    elif last is not None:
        result["value"] = _bounded(_safe_repr(value), max_chars)
    for key, buffer in (("stdout", out), ("stderr", err)):
        if buffer.text():
            result[key] = buffer.text()
    if failure is not None:
        raise ToolError("\n".join(f"{key}: {text}" for key, text in result.items())) from None
    return result


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<{type(value).__name__} object (repr failed: {type(exc).__name__})>"


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit:,} more characters)"


class _Buffer:
    """Keeps the first `limit` characters written and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))

    def text(self) -> str:
        tail = f"\n… ({self.dropped:,} more characters)" if self.dropped else ""
        return "".join(self.parts) + tail


class _Routed:
    """Stands in for sys.stdout/sys.stderr: a capturing thread's writes go to its buffer,
    everyone else's to the stream it replaced."""

    def __init__(self, original: TextIO, which: int) -> None:
        self.original = original
        self.which = which

    def write(self, text: str) -> int:
        buffers = _CAPTURES.get(threading.get_ident())
        if buffers is None:
            return self.original.write(text)
        buffers[self.which].write(text)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if threading.get_ident() not in _CAPTURES:
            self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


_CAPTURES: dict[int, tuple[_Buffer, _Buffer]] = {}
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def _captured(limit: int) -> Iterator[tuple[_Buffer, _Buffer]]:
    """Capture this thread's stdout and stderr; the streams are restored by the last one out."""
    buffers = (_Buffer(limit), _Buffer(limit))
    ident = threading.get_ident()
    with _CAPTURE_LOCK:
        if not _CAPTURES:
            sys.stdout = _Routed(sys.stdout, 0)
            sys.stderr = _Routed(sys.stderr, 1)
        _CAPTURES[ident] = buffers
    try:
        yield buffers
    finally:
        with _CAPTURE_LOCK:
            del _CAPTURES[ident]
            if not _CAPTURES:
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    if isinstance(stream, _Routed):
                        setattr(sys, name, stream.original)
