"""Shutdown under stress: bounded by its timeout whatever runs, safe from any thread.

Each case measures `shutdown(timeout)` against its own timeout plus a generous slack
(SLACK) and checks what it leaves behind: the runtime thread stopped, its loop closed, no
socket to the server open. A tool blocked forever is abandoned, and it must neither hold
shutdown up nor keep the interpreter from exiting (checked in a subprocess).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter import AgentError, AgentRuntime, Timeout, TurnResult
from agentrt_jupyter.server.process import LocalServer

from .conftest import runtime_config
from .reliability_helpers import (
    connections_to,
    runtime_threads,
    server_port,
    settle,
    suite_figures,
)

SLACK = 1.0
"""Seconds a shutdown may take past its timeout (a busy 2-core machine)."""
ROOT = Path(__file__).resolve().parents[1]


def blocking_tool(started: threading.Event, release: threading.Event) -> Any:
    def wait_for_release(seconds: int) -> str:
        """Block this worker thread until released (or `seconds` pass)."""
        started.set()
        release.wait(seconds)
        return "released"

    return wait_for_release


def timed_shutdown(runtime: AgentRuntime, timeout: float) -> tuple[float, BaseException | None]:
    begun = time.monotonic()
    try:
        runtime.shutdown(timeout)
    except BaseException as exc:
        return time.monotonic() - begun, exc
    return time.monotonic() - begun, None


def stopped_cleanly(runtime: AgentRuntime, port: int, sockets_before: int) -> None:
    assert runtime.closed
    assert not runtime.thread.is_alive(), "the runtime thread is still running"
    assert runtime.loop.is_closed()
    assert connections_to(port) <= sockets_before, "sockets to the server left open"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_shutdown_while_a_hundred_agents_stream_tiny_chunks_is_bounded(
    server: LocalServer, tag: str
) -> None:
    port = server_port(server)
    sockets_before = connections_to(port)
    with suite_figures("shutdown stress", "100 agents streaming @@tiny 100000") as figures:
        figures.trials = 1
        runtime = AgentRuntime(runtime_config(server))
        crowd = [runtime.create_agent() for _ in range(100)]
        handles = [a.chat(f"@@tiny 100000\n{tag}a{i}z") for i, a in enumerate(crowd)]
        # One stream flowing is enough: the server cannot feed 100 such streams at once
        # (some would wait past idle_chunk_timeout); the others are connecting or waiting.
        next(iter(handles[0].events(timeout=60)))
        took, error = timed_shutdown(runtime, 5.0)
        figures.details["shutdown_s"] = round(took, 3)
        assert error is None, f"shutdown(5) raised {error!r} after {took:.2f} s"
        assert took < 5.0 + SLACK, f"shutdown(5) took {took:.2f} s"
        ends = Counter(h.status if h.done else "not ended" for h in handles)
        assert ends == {"cancelled": 100}, f"turns after shutdown: {dict(ends)}"
        stopped_cleanly(runtime, port, sockets_before)
        left = runtime_threads(runtime)
        assert not left, f"threads of the stopped runtime still alive: {left}"
        figures.passed = 1


def test_shutdown_with_a_sync_tool_blocked_for_30_s_returns_within_its_timeout(
    server: LocalServer, tag: str
) -> None:
    port = server_port(server)
    sockets_before = connections_to(port)
    started, release = threading.Event(), threading.Event()
    with suite_figures("shutdown stress", "a sync tool blocked 30 s, shutdown(1)") as figures:
        figures.trials = 1
        runtime = AgentRuntime(runtime_config(server))
        try:
            agent = runtime.create_agent(tools=[blocking_tool(started, release)])
            handle = agent.chat(f'@@call wait_for_release {{"seconds": 30}}\n{tag}')
            assert started.wait(20), "the tool never started"
            took, error = timed_shutdown(runtime, 1.0)
            figures.details["shutdown_s"] = round(took, 3)
            assert error is None, f"shutdown(1) raised {error!r} after {took:.2f} s"
            assert took < 1.0 + SLACK, f"shutdown(1) took {took:.2f} s"
            assert handle.done and handle.status == "cancelled"
            stopped_cleanly(runtime, port, sockets_before)
        finally:
            release.set()
        figures.passed = 1


def test_shutdown_with_a_tiny_timeout_returns_at_once_or_raises_timeout(
    server: LocalServer, tag: str
) -> None:
    port = server_port(server)
    sockets_before = connections_to(port)
    started, release = threading.Event(), threading.Event()
    with suite_figures("shutdown stress", "shutdown(0.01) under load") as figures:
        figures.trials = 1
        runtime = AgentRuntime(runtime_config(server))
        try:
            blocked = runtime.create_agent(tools=[blocking_tool(started, release)])
            blocked.chat(f'@@call wait_for_release {{"seconds": 30}}\n{tag}b')
            crowd = [runtime.create_agent() for _ in range(20)]
            handles = [a.chat(f"@@delay 10\n@@chunks 200\n{tag}a{i}z") for i, a in enumerate(crowd)]
            for handle in handles:
                next(iter(handle.events(timeout=30)))
            assert started.wait(20), "the tool never started"
            took, error = timed_shutdown(runtime, 0.01)
            figures.details["shutdown_s"] = round(took, 3)
            figures.details["raised"] = type(error).__name__ if error else None
            assert error is None or isinstance(error, Timeout), f"shutdown raised {error!r}"
            assert took < 0.01 + SLACK, f"shutdown(0.01) took {took:.2f} s"
            if error is None:
                assert not runtime.thread.is_alive(), "returned although the thread still runs"
            runtime.thread.join(5.0)
            stopped_cleanly(runtime, port, sockets_before)
        finally:
            release.set()
        figures.passed = 1


def test_shutdown_from_inside_a_sync_tool_is_refused_at_once(server: LocalServer, tag: str) -> None:
    """Waiting there would deadlock (the shutdown waits for the tool): an error at once."""
    seen: dict[str, Any] = {}
    returned = threading.Event()
    with suite_figures("shutdown stress", "shutdown(30) from inside a sync tool") as figures:
        figures.trials = 1
        runtime = AgentRuntime(runtime_config(server))
        try:

            def stop_the_runtime() -> str:
                """Try to shut the runtime down from inside a tool."""
                begun = time.monotonic()
                try:
                    runtime.shutdown(30)
                except Exception as exc:
                    seen["error"] = exc
                seen["took"] = time.monotonic() - begun
                returned.set()
                return "tried"

            agent = runtime.create_agent(tools=[stop_the_runtime])
            handle = agent.chat(f"@@call stop_the_runtime {{}}\n{tag}")
            assert returned.wait(45.0), "shutdown(30) inside a tool did not return within 45 s"
            outcome = settle(handle, 20.0)
            figures.details["answered_s"] = round(seen["took"], 3)
            assert isinstance(seen.get("error"), AgentError | RuntimeError), (
                f"shutdown() inside a tool returned after {seen['took']:.2f} s without an error"
            )
            assert seen["took"] < 5.0, f"the refusal took {seen['took']:.2f} s"
            assert isinstance(outcome, TurnResult), (
                f"the turn failed after the refusal: {outcome!r}"
            )
            assert not runtime.closed
        finally:
            runtime.shutdown(10)
        figures.passed = 1


def test_shutdown_from_an_async_tool_on_the_loop_is_refused_at_once(
    server: LocalServer, tag: str
) -> None:
    seen: dict[str, Any] = {}
    with AgentRuntime(runtime_config(server)) as runtime:

        async def stop_from_the_loop() -> str:
            """Try to shut the runtime down from the runtime's own loop."""
            try:
                runtime.shutdown(30)
            except Exception as exc:
                seen["error"] = exc
            await asyncio.sleep(0)
            return "tried"

        agent = runtime.create_agent(tools=[stop_from_the_loop])
        outcome = settle(agent.chat(f"@@call stop_from_the_loop {{}}\n{tag}"), 20.0)
        assert isinstance(seen.get("error"), AgentError | RuntimeError), seen
        assert isinstance(outcome, TurnResult), outcome
        assert not runtime.closed


def test_two_threads_shutting_down_at_once_both_return_after_the_stop(
    server: LocalServer, tag: str
) -> None:
    started, release = threading.Event(), threading.Event()
    with suite_figures("shutdown stress", "two threads call shutdown(10) at once") as figures:
        figures.trials = 1
        runtime = AgentRuntime(runtime_config(server))
        try:
            blocked = runtime.create_agent(tools=[blocking_tool(started, release)])
            blocked.chat(f'@@call wait_for_release {{"seconds": 30}}\n{tag}b')
            crowd = [runtime.create_agent() for _ in range(50)]
            handles = [a.chat(f"@@delay 10\n@@chunks 200\n{tag}a{i}z") for i, a in enumerate(crowd)]
            for handle in handles:
                next(iter(handle.events(timeout=30)))
            assert started.wait(20), "the tool never started"
            barrier = threading.Barrier(2)
            seen: list[tuple[str, bool, bool]] = []

            def stop() -> None:
                barrier.wait(10)
                try:
                    runtime.shutdown(10)
                    outcome = "returned"
                except Timeout:
                    outcome = "timeout"
                seen.append((outcome, runtime.closed, runtime.thread.is_alive()))

            callers = [threading.Thread(target=stop, name=f"stopper-{i}") for i in range(2)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(30)
            assert len(seen) == 2, f"a shutdown() call did not return: {seen}"
            outcomes = {outcome for outcome, _, _ in seen}
            assert outcomes in ({"returned"}, {"timeout"}), seen
            if outcomes == {"returned"}:
                assert all(closed and not alive for _, closed, alive in seen), (
                    f"a caller returned before the runtime stopped: {seen}"
                )
        finally:
            release.set()
        figures.passed = 1


ABANDONED_TOOL_SCRIPT = textwrap.dedent(
    """
    import os, threading
    from agentrt_jupyter import AgentRuntime, RuntimeConfig

    started = threading.Event()

    def block(seconds: int) -> str:
        '''Block far longer than the process should live.'''
        started.set()
        threading.Event().wait(seconds)
        return "done"

    config = RuntimeConfig(
        base_url=os.environ["AGENTRT_TEST_URL"],
        api_key=os.environ["AGENTRT_TEST_KEY"],
        api_version="v1beta",
        store_path=None,
    )
    runtime = AgentRuntime(config)
    agent = runtime.create_agent(tools=[block])
    agent.chat('@@call block {"seconds": 60}\\nabandon me')
    assert started.wait(30), "the tool never started"
    runtime.shutdown(1)
    print("shutdown returned", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_abandoned_tool_thread_never_blocks_interpreter_exit(server: LocalServer) -> None:
    """A process whose tool blocks for 60 s exits promptly after shutdown(1), cleanly."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ, PYTHONPATH=path, AGENTRT_TEST_URL=server.url, AGENTRT_TEST_KEY=server.token
    )
    with suite_figures("shutdown stress", "process exit with a tool blocked 60 s") as figures:
        figures.trials = 1
        begun = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-c", ABANDONED_TOOL_SCRIPT],
                capture_output=True,
                text=True,
                timeout=40,
                env=env,
                cwd=ROOT,
            )
        except subprocess.TimeoutExpired as expired:
            output = [
                (v.decode("utf-8", "replace") if isinstance(v, bytes) else v or "")
                for v in (expired.stdout, expired.stderr)
            ]
            raise AssertionError(
                f"the process did not exit within 40 s; stdout {output[0]!r}, stderr:\n{output[1]}"
            ) from None
        took = time.monotonic() - begun
        figures.details["exit_s"] = round(took, 2)
        assert done.returncode == 0, f"exit code {done.returncode}; stderr:\n{done.stderr}"
        assert "shutdown returned" in done.stdout
        assert "Fatal Python error" not in done.stderr, done.stderr
        assert "Task exception was never retrieved" not in done.stderr, done.stderr
        assert took < 15.0, f"the process took {took:.1f} s to exit (the tool blocks 60 s)"
        figures.passed = 1
