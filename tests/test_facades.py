"""The sync and async facades offer the same commands, and the export list matches its typed block.

Modelled on httpx's `tests/test_exported_members.py` and anyio's `tests/test_all_attributes.py`:
a command added to one facade and not the other, or an export missing from `TYPE_CHECKING`,
fails here instead of drifting.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

import agentrt_jupyter
from agentrt_jupyter import (
    Agent,
    AgentRuntime,
    AsyncAgent,
    AsyncAgentRuntime,
    TextDelta,
    WrongThread,
)

SYNC_ONLY = {
    "start_task_soon": "enters the loop from another thread; async code awaits instead",
    "start_warm_up": "returns the warm-up's future; async code awaits asyncio.wrap_future(...)",
}
"""Sync commands with no async twin, and why."""

NEVER_WAITS = {"try_shutdown", "try_shutdown_agent"}
"""Twins that are plain functions on both facades: they must work in finalizers."""


def _commands(cls: type) -> dict[str, inspect.Signature]:
    """Public methods of `cls` (properties and dunders are state, not commands)."""
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def _parameters(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize(
    ("sync", "aio", "sync_only"),
    [(AgentRuntime, AsyncAgentRuntime, set(SYNC_ONLY)), (Agent, AsyncAgent, set())],
    ids=["runtime", "agent"],
)
def test_the_async_facade_offers_every_sync_command_with_the_same_parameters(
    sync: type, aio: type, sync_only: set[str]
) -> None:
    sync_commands = _commands(sync)
    aio_commands = _commands(aio)
    assert set(sync_commands) - sync_only == set(aio_commands)
    for name, aio_signature in aio_commands.items():
        assert _parameters(sync_commands[name]) == _parameters(aio_signature), name
        awaitable = inspect.iscoroutinefunction(getattr(aio, name)) or inspect.isasyncgenfunction(
            getattr(aio, name)
        )
        assert awaitable != (name in NEVER_WAITS), f"{aio.__name__}.{name}"


def test_sync_only_commands_exist_on_the_sync_runtime() -> None:
    assert set(SYNC_ONLY) <= set(_commands(AgentRuntime))


def _typed_exports() -> dict[str, str]:
    """{name: submodule} imported under `if TYPE_CHECKING:` in the package's `__init__`."""
    tree = ast.parse(Path(agentrt_jupyter.__file__).read_text(encoding="utf-8"))
    (block,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    names: dict[str, str] = {}
    for node in ast.walk(block):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1 and node.module, ast.unparse(node)
            for alias in node.names:
                assert alias.asname == alias.name, f"{alias.name} must be re-exported as itself"
                names[alias.name] = node.module
    return names


def test_the_export_list_and_its_typed_block_name_the_same_things_from_the_same_modules() -> None:
    lazy = set(agentrt_jupyter.__all__) - {"load_ipython_extension", "unload_ipython_extension"}
    assert set(agentrt_jupyter._EXPORTS) == lazy
    assert _typed_exports() == agentrt_jupyter._EXPORTS


def test_an_async_agent_handle_awaits_without_blocking_the_callers_loop(
    rt: AgentRuntime, tag: str
) -> None:
    async def main() -> tuple[AsyncAgent, str, int, list[str], int, int]:
        agent = await rt.aio.create_agent(name=f"aio-{tag}")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        handle = await agent.chat(f"@@delay 40\n@@chunks 5\nasync handle {tag}")
        text = await handle.atext()
        ticker.cancel()
        ticks_while_streaming = ticks
        count = await agent.turn_count()
        roles = [m.role for m in await agent.history()]
        calls = len(await agent.ledger())
        await agent.delete()
        return agent, text, count, roles, calls, ticks_while_streaming

    agent, text, count, roles, calls, ticks = asyncio.run(main())
    assert isinstance(agent, AsyncAgent)
    assert text == f"Echo: async handle {tag}"
    assert (count, roles, calls) == (1, ["user", "model"], 1)
    assert ticks >= 10  # 5 chunks 40 ms apart: the caller's loop ran on meanwhile
    assert agent.id not in [info.id for info in rt.agents()]


def test_handles_convert_between_sync_and_async_on_the_same_agent(
    rt: AgentRuntime, tag: str
) -> None:
    agent = rt.create_agent(name=f"both-{tag}")
    agent.chat(f"first {tag}").text()
    twin = agent.aio
    assert (twin.id, twin.name) == (agent.id, agent.name)
    assert asyncio.run(twin.turn_count()) == 1
    assert twin.sync.turn_count() == 1
    found = asyncio.run(rt.aio.agent(f"both-{tag}"))
    assert isinstance(found, AsyncAgent) and found.id == agent.id


def test_the_sync_watch_yields_now_and_after_a_change(rt: AgentRuntime) -> None:
    changes = rt.watch(interval=0.01)
    first = next(changes)
    agent = rt.create_agent()
    second = next(changes)
    changes.close()
    assert first == []
    assert [info.id for info in second] == [agent.id]


def test_async_shutdown_is_refused_on_the_runtime_loop_and_ends_the_runtime_elsewhere(
    rt: AgentRuntime,
) -> None:
    async def on_loop() -> None:
        await rt.aio.shutdown(1)

    with pytest.raises(WrongThread):
        rt.start_task_soon(on_loop).result(10)
    assert not rt.closed
    events = [e for e in rt.create_agent().chat("still here") if isinstance(e, TextDelta)]
    assert events
    asyncio.run(rt.aio.shutdown(10))
    assert rt.closed and not rt.thread.is_alive()
