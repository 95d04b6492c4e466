"""`reconfigure`: new settings for an idle agent, which stays the same agent (issue 17
item 13): its id, its conversation, its stored record; the next request uses them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentrt_jupyter import AgentRuntime, InvalidConfig
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config


def test_new_settings_apply_to_the_same_agent_and_conversation(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        agent = runtime.create_agent(name="steady", model="first-model")
        agent.chat(f"one {tag}").text(timeout=20)
        agent.reconfigure(model="second-model", system_instruction="Be brief.")
        agent.chat(f"two {tag}").text(timeout=20)
        agent.wait_for_idle(10)
        [info] = runtime.agents()
        assert (info.id, info.model, info.state, info.turn_count) == (
            agent.id, "second-model", "idle", 2
        )  # fmt: skip
        second = requests_with(server, f"two {tag}")[-1]
        assert "second-model" in second["path"]
        assert [c["role"] for c in second["body"]["contents"]] == ["user", "model", "user"]
        assert second["body"]["systemInstruction"]["parts"][0]["text"] == "Be brief."
        [stored] = runtime.conversations()
    with AgentRuntime(runtime_config(server, store_path=store_path)) as restarted:
        resumed = restarted.resume("steady")  # the stored record has the new settings
        assert restarted.agents()[0].model == "second-model"
        assert [c.id for c in restarted.conversations()] == [stored.id]
        assert resumed.turn_count() == 2


def test_a_running_agent_is_not_reconfigured(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent(name="busy")
    handle = agent.chat(f"@@delay 50\n@@chunks 20\nslow {tag}")
    with pytest.raises(InvalidConfig, match="running a turn"):
        agent.reconfigure(model="other")
    handle.text(timeout=20)
    assert rt.agents()[0].model != "other"


def test_the_async_twin_reconfigures_too(rt: AgentRuntime) -> None:
    async def switch() -> tuple[str, str]:
        agent = await rt.aio.create_agent(name="twin")
        await agent.reconfigure(model="async-model")
        return agent.id, (await rt.aio.agent("twin")).id

    created, found = asyncio.run(switch())
    assert created == found
    assert [(info.id, info.model) for info in rt.agents()] == [(created, "async-model")]
