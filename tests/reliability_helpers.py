"""Witnesses for the reliability suite: the server's log, our sockets, threads and tasks.

The suite checks promises from the user's side: every turn ends, typed; the server saw
exactly one request per ledger row; nothing is left running after shutdown. These helpers
read those facts without touching the runtime's internals, and `suite_figures` records each
suite's figures for the README's "Reliability" section.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """The prompt a logged request answers: the last text part of its last user message
    with text (what the scripted engine reads)."""
    body = record.get("body") or {}
    for content in reversed(body.get("contents") or []):
        if content.get("role", "user") != "user":
            continue
        texts = [p["text"] for p in content.get("parts") or [] if isinstance(p.get("text"), str)]
        if texts:
            return str(texts[-1])
    return ""


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
