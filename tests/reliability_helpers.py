"""Witnesses for the reliability suite: the server's log, our sockets, threads and tasks.

The suite checks promises from the user's side: every turn ends, typed; the server saw
exactly one request per ledger row; nothing is left running after shutdown. These helpers
read those facts without touching the runtime's internals, and `suite_figures` records each
suite's figures for the README's "Reliability" section.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agentrt_jupyter import (
    AgentRuntime,
    ChatHandle,
    RuntimeConfig,
    Timeout,
    TurnError,
    TurnResult,
)
from agentrt_jupyter.server.process import LocalServer

from .conftest import assert_valid_conversation, runtime_config

T = TypeVar("T")
REPORT_VARIABLE = "AGENTRT_RELIABILITY_REPORT"
_WORD_CHUNK = re.compile(r"\s*\S+\s*")


@dataclass
class Figures:
    """What one suite (or one case of it) tried and how much of it kept its promise."""

    suite: str
    case: str | None = None
    trials: int = 0
    passed: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def suite_figures(suite: str, case: str | None = None) -> Iterator[Figures]:
    """Count a suite's trials; on exit append one JSON line to $AGENTRT_RELIABILITY_REPORT.

    Lines carry `suite`, `case`, `trials`, `passed`, `elapsed_s`, `outcome` (passed/failed)
    and `details`; a parametrized suite writes one line per case, to be summed by suite.
    """
    figures = Figures(suite, case)
    started = time.monotonic()
    outcome = "failed"
    try:
        yield figures
        outcome = "passed"
    finally:
        path = os.environ.get(REPORT_VARIABLE)
        if path:
            line = {
                "suite": figures.suite,
                "case": figures.case,
                "trials": figures.trials,
                "passed": figures.passed,
                "elapsed_s": round(time.monotonic() - started, 3),
                "outcome": outcome,
                "details": figures.details,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with open(path, "a", encoding="utf-8") as report:
                report.write(json.dumps(line, sort_keys=True) + "\n")


def agent_tag(tag: str, index: int) -> str:
    """A marker unique to one agent of a test; no agent's marker contains another's."""
    return f"{tag}a{index}z"


def echo_prefix(user_text: str, chunks: int) -> str:
    """The text of the scripted engine's first `chunks` chunks of `Echo: <user_text>`."""
    return "".join(_WORD_CHUNK.findall(f"Echo: {user_text}")[:chunks])


def prompt_of(record: dict[str, Any]) -> str:
    """The prompt a logged request answers: the last text of its last user message with
    text (what the scripted engine reads), in any of the three wire formats."""
    body = record.get("body") or {}
    if "contents" in body:
        messages = [(c.get("role", "user"), c.get("parts")) for c in body["contents"]]
    else:
        messages = [(m.get("role"), m.get("content")) for m in body.get("messages") or []]
    for role, content in reversed(messages):
        if role != "user":
            continue
        texts = _texts(content)
        if texts:
            return texts[-1]
    return ""


def _texts(content: Any) -> list[str]:
    """The texts of a message's content: a string, or Gemini parts / OpenAI or Anthropic
    blocks (a tool result has none)."""
    if isinstance(content, str):
        return [content]
    blocks = [p for p in content or [] if isinstance(p, dict) and p.get("type", "text") == "text"]
    return [str(p["text"]) for p in blocks if isinstance(p.get("text"), str)]


PROVIDER_MODELS = {"openai": "openai:gpt-4.1-mini", "anthropic": "anthropic:claude-sonnet-4-5"}
_ENVIRONMENT = {"openai": "OPENAI", "anthropic": "ANTHROPIC"}


@dataclass(frozen=True)
class Provider:
    """The provider a test's agents talk to, through its own SDK, on the local server.

    Gemini is the runtime's own endpoint. For the others the runtime's default model
    names the provider (`openai:gpt-4.1-mini`) and that SDK's environment variables
    point at the server's route for it (`environment`, set by conftest's `use_provider`),
    so a plain `create_agent()` and a `resume()` both reach it as a user's would.
    """

    name: str
    server: LocalServer

    @property
    def model(self) -> str | None:
        return PROVIDER_MODELS.get(self.name)

    @property
    def base_url(self) -> str:
        if self.name == "openai":
            return self.server.openai_base_url
        if self.name == "anthropic":
            return self.server.anthropic_base_url
        return self.server.url

    @property
    def environment(self) -> dict[str, str]:
        """The SDK's key and base URL variables, pointing at the local server."""
        prefix = _ENVIRONMENT.get(self.name)
        if prefix is None:
            return {}
        return {f"{prefix}_API_KEY": self.server.token, f"{prefix}_BASE_URL": self.base_url}

    def config(self, **overrides: Any) -> RuntimeConfig:
        """The conftest's runtime config, its default model on this provider."""
        if self.model is not None:
            overrides.setdefault("default_model", self.model)
        return runtime_config(self.server, **overrides)


def assert_valid_request(record: dict[str, Any]) -> None:
    """The conversation a logged request sent is one its provider accepts (Gemini's,
    Chat Completions' or Messages' rules, by what the request is)."""
    body = record["body"]
    if "contents" in body:
        assert_valid_conversation(body["contents"])
    elif str(record.get("path", "")).endswith("/chat/completions"):
        _assert_valid_chat(body["messages"])
    else:
        assert_valid_messages(body["messages"])


def _assert_valid_chat(messages: list[dict[str, Any]]) -> None:
    """Chat Completions: an optional system message, then a user message first and a user
    or tool message last (consecutive user messages are allowed), nothing empty, and every
    assistant tool call answered by `tool` messages right after it."""
    turns = [m for m in messages if m["role"] != "system"]
    assert turns and turns[0]["role"] == "user" and turns[-1]["role"] in ("user", "tool"), turns
    for index, message in enumerate(turns):
        assert message.get("content") or message.get("tool_calls"), f"empty message {message}"
        calls = {c["id"] for c in message.get("tool_calls") or []}
        if calls:
            answers = itertools.takewhile(lambda m: m["role"] == "tool", turns[index + 1 :])
            assert calls <= {m["tool_call_id"] for m in answers}, turns


def assert_valid_messages(messages: list[dict[str, Any]]) -> None:
    """Anthropic Messages: user first and last, roles alternating, and every tool_use
    answered by a tool_result in the next message."""
    roles = [m["role"] for m in messages]
    assert roles[0] == roles[-1] == "user", roles
    assert all(a != b for a, b in itertools.pairwise(roles)), roles
    for index, message in enumerate(messages):
        blocks = message["content"] if isinstance(message["content"], list) else []
        used = {b["id"] for b in blocks if b["type"] == "tool_use"}
        if used:
            answers = messages[index + 1]["content"]
            assert used <= {b["tool_use_id"] for b in answers if b["type"] == "tool_result"}


class ServerWitness:
    """This test's model requests, read from the shared server's log.

    Remembers where the log stood when created, so it never re-reads earlier tests'
    requests (the log of a session-wide server grows with every test).
    """

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        try:
            self.since = int(server.last_request()["id"])
        except LookupError:
            self.since = 0

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in self.server.requests(self.since) if r.get("kind") != "model"]

    def by_marker(self, pattern: str) -> dict[str, list[dict[str, Any]]]:
        """Requests grouped by the one match of regex `pattern` in their body; a request
        whose body matches two different markers (two agents' words mixed) fails."""
        compiled = re.compile(pattern)
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in self.requests():
            found = set(compiled.findall(json.dumps(record.get("body"))))
            if not found:
                continue
            assert len(found) == 1, f"request {record['id']} mixes conversations: {found}"
            grouped.setdefault(found.pop(), []).append(record)
        return grouped


def settle(handle: ChatHandle, timeout: float) -> TurnResult | TurnError:
    """The turn's result or its typed error; an AssertionError if it did not end in time."""
    try:
        return handle.result(timeout=timeout)
    except TurnError as exc:
        return exc
    except Timeout:
        raise AssertionError(
            f"turn of {handle.agent!r} did not end within {timeout} s (status {handle.status})"
        ) from None


def bounded(call: Callable[[], T], timeout: float, what: str) -> T:
    """Run a blocking runtime call on a helper thread; fail (not hang) past `timeout`.

    For calls that wait without a timeout of their own, where a broken promise (a dead
    runtime thread) would otherwise hang the test until pytest-timeout.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="reliability-bounded", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise AssertionError(f"{what}: no answer within {timeout} s (the runtime is stuck)")
    ok, value = outcome[0]
    if not ok and not isinstance(value, Exception):  # SystemExit & co. would end pytest
        raise AssertionError(f"{what}: raised {value!r}") from value
    if not ok:
        raise value
    result: T = value
    return result


@contextlib.contextmanager
def started_runtime(
    config: RuntimeConfig, shutdown_timeout: float = 10.0
) -> Iterator[AgentRuntime]:
    """A runtime shut down on exit, within a bound; after a failure in the body its own
    shutdown error (e.g. a runtime thread that died) does not hide the failure."""
    runtime = AgentRuntime(config)

    def stop() -> None:
        bounded(lambda: runtime.shutdown(shutdown_timeout), shutdown_timeout + 5, "shutdown")

    try:
        yield runtime
    except BaseException:
        with contextlib.suppress(Exception):
            stop()
        raise
    stop()


def loop_tasks(runtime: AgentRuntime) -> int:
    """Tasks on the runtime's loop besides the one counting them."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return asyncio.run_coroutine_threadsafe(count(), runtime.loop).result(10)


def server_port(server: LocalServer) -> int:
    port = urllib.parse.urlsplit(server.url).port
    assert port is not None, server.url
    return port


def _socket_inodes() -> set[str]:
    inodes = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def connections_to(port: int) -> int:
    """This process's open TCP sockets whose peer is `port` on this machine.

    /proc/net/tcp lists the whole network namespace (the server's own ends too), so only
    sockets whose inode is one of this process's file descriptors count.
    """
    ours = _socket_inodes()
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                columns = line.split()
                remote_port = int(columns[2].rsplit(":", 1)[1], 16)
                if remote_port == port and columns[9] in ours:
                    count += 1
    return count


def runtime_threads(runtime: AgentRuntime, grace: float = 5.0) -> list[str]:
    """Threads named like this runtime's own thread (its loop, its workers) still alive
    after joining them for up to `grace` seconds in all (a last call may be finishing)."""
    name = runtime.thread.name
    deadline = time.monotonic() + grace
    named = [t for t in threading.enumerate() if t.name.startswith(name)]
    for thread in named:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sorted(t.name for t in named if t.is_alive())


def threads_left(before: set[threading.Thread], timeout: float = 10.0) -> list[str]:
    """Threads started since `before` that are still alive after joining them for up to
    `timeout` seconds in all (worker threads finishing their last call may take a moment)."""
    deadline = time.monotonic() + timeout
    for thread in set(threading.enumerate()) - before:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive())
