"""Many agents at once, siblings that fail, shutdown under load, and nothing leaked after."""

from __future__ import annotations

import asyncio
import os
import stat
import threading

import pytest

from agentrt_jupyter import AgentRuntime, BackendError, StreamBroken, TurnCancelled
from agentrt_jupyter.server.process import LocalServer

from .conftest import runtime_config


def open_sockets() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.stat(f"/proc/self/fd/{name}").st_mode):
                count += 1
        except FileNotFoundError:
            continue
    return count


def loop_tasks(runtime: AgentRuntime) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return asyncio.run_coroutine_threadsafe(count(), runtime.loop).result(5)


def test_two_hundred_agents_chat_at_once(rt: AgentRuntime, tag: str) -> None:
    agents = [rt.create_agent() for _ in range(200)]
    handles = [a.chat(f"@@chunks 5\nagent {i} says hi {tag}") for i, a in enumerate(agents)]
    texts = [h.text(timeout=120) for h in handles]
    assert texts == [f"Echo: agent {i} says hi {tag}" for i in range(200)]
    assert all(a.turn_count() == 1 for a in agents[:5])
    assert len(rt.ledger()) == 200


def test_a_chat_survives_a_siblings_cancel_error_and_shutdown(rt: AgentRuntime, tag: str) -> None:
    survivor = rt.create_agent()
    cancelled, failing, stopped = (rt.create_agent() for _ in range(3))
    long_reply = survivor.chat(f"@@delay 20\n@@chunks 20\nthe survivor keeps talking {tag}")
    doomed = cancelled.chat(f"@@fault hang\n{tag}")
    broken = failing.chat(f"@@fault drop_after 1\nbreak me {tag}")
    stopping = stopped.chat(f"@@fault hang\n{tag}")
    doomed.cancel()
    stopped.shutdown()
    with pytest.raises(TurnCancelled):
        doomed.text(timeout=10)
    with pytest.raises((StreamBroken, BackendError)):
        broken.text(timeout=10)
    with pytest.raises(TurnCancelled):
        stopping.text(timeout=10)
    assert long_reply.text(timeout=20) == f"Echo: the survivor keeps talking {tag}"
    assert survivor.chat(f"still here {tag}").text(timeout=10) == f"Echo: still here {tag}"


def test_shutdown_while_fifty_turns_stream_is_bounded_and_leaks_nothing(
    server: LocalServer, tag: str
) -> None:
    threads_before = set(threading.enumerate())
    sockets_before = open_sockets()
    runtime = AgentRuntime(runtime_config(server))
    agents = [runtime.create_agent() for _ in range(50)]
    warm = agents[0].chat(f"warm {tag}")
    warm.text(timeout=10)
    assert loop_tasks(runtime) == 0
    handles = [a.chat(f"@@delay 50\n@@chunks 200\nstreaming along {tag}") for a in agents]
    for handle in handles:
        next(iter(handle))
    runtime.shutdown(timeout=5)  # raises Timeout past it
    assert all(h.status == "cancelled" for h in handles)
    assert set(threading.enumerate()) <= threads_before
    assert open_sockets() <= sockets_before


def test_finished_turns_leave_no_tasks_on_the_loop(rt: AgentRuntime, tag: str) -> None:
    agents = [rt.create_agent() for _ in range(10)]
    for handle in [a.chat(f"@@chunks 3\nquick {tag}") for a in agents]:
        handle.text(timeout=10)
    cancelled = agents[0].chat(f"@@fault hang\n{tag}")
    cancelled.cancel()
    with pytest.raises(TurnCancelled):
        cancelled.text(timeout=10)
    for agent in agents:
        agent.wait_for_idle(timeout=10)
    assert loop_tasks(rt) == 0
