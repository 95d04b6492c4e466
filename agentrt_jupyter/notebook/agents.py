"""The notebook's agents, keyed once by name: the runtime's handle and the settings cells gave.

One `NotebookAgents` per runtime, so a new runtime starts with none and nothing stale
outlives the runtime it came from. The magics parse a cell and call in here; what to
create, resume or reconfigure is decided here alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from ..config import agent_config
from ..errors import AgentNotFound, AgentShutDown
from ..handle import ChatHandle
from ..runtime import Agent, AgentRuntime

_GONE = ("shutdown", "disconnected")
_noted_local_model = False


@dataclass
class NotebookAgent:
    """An agent a cell talked to, and the settings the cells gave it so far."""

    agent: Agent
    settings: dict[str, Any]


class NotebookAgents:
    """The agents of one notebook on one runtime, by name."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self._by_name: dict[str, NotebookAgent] = {}

    def settings(self, name: str) -> dict[str, Any]:
        """The settings cells gave NAME so far (empty for an agent no cell configured)."""
        known = self._by_name.get(name)
        return dict(known.settings) if known is not None else {}

    def chat(
        self, name: str, settings: dict[str, Any], text: str, *, new: bool = False
    ) -> tuple[Agent, ChatHandle]:
        """Start a turn; a warm cell of an unchanged agent is one runtime round trip."""
        known = self._by_name.get(name)
        if known is not None and not new and {**known.settings, **settings} == known.settings:
            try:
                return known.agent, self.runtime.chat(known.agent, text)
            except (AgentNotFound, AgentShutDown):
                self.forget(name)  # shut down or deleted behind the notebook's back
        agent = self.ensure(name, settings, new=new)
        return agent, self.runtime.chat(agent, text)

    def ensure(self, name: str, settings: dict[str, Any], *, new: bool = False) -> Agent:
        """The live agent NAME with these settings: created, resumed or reconfigured."""
        runtime = self.runtime
        known = self.settings(name)
        merged = {**known, **settings}
        config = agent_config(None, {**merged, "name": name})
        live = self._is_live(name)
        if live and merged == known:
            agent = runtime.agent(name)
        elif live:
            if not runtime.is_idle(name):
                raise UsageError(f"agent {name!r} is busy: change its settings after this turn")
            if runtime.config.store_path is None:
                raise UsageError(
                    f"agent {name!r} exists with other settings and there is no store to "
                    "carry its conversation over: use another name, or --new without settings"
                )
            runtime.disconnect(name)
            agent = runtime.resume(name, config)
        elif name in runtime.stored_conversations():
            agent = runtime.resume(name, config if merged else None)
        else:
            _note_local_model(runtime)
            agent = runtime.create_agent(config)
        self._by_name[name] = NotebookAgent(agent, merged)
        if new:
            runtime.clear_history(agent)
        return agent

    def named(self, name: str) -> Agent:
        """A live agent, resuming a stored one if needed."""
        if self._is_live(name):
            return self.runtime.agent(name)
        if name in self.runtime.stored_conversations():
            return self.ensure(name, {})
        raise UsageError(f"no agent {name!r}: start one with a %%agent {name} cell")

    def live_names(self) -> list[str]:
        return [info.name for info in self.runtime.agents() if info.state not in _GONE]

    def shutdown(self, name: str) -> None:
        """Stop NAME; its stored conversation is kept, and the next cell resumes it."""
        self.runtime.shutdown_agent(name)
        self.forget(name)

    def delete(self, name: str) -> None:
        """Stop NAME and erase its stored conversation; the next cell starts it afresh."""
        self.runtime.delete(name)
        self.forget(name)

    def forget(self, name: str) -> None:
        self._by_name.pop(name, None)

    def _is_live(self, name: str) -> bool:
        return name in self.live_names()


def _note_local_model(runtime: AgentRuntime) -> None:
    """Say once per kernel that replies come from the small local model, and how to change it."""
    global _noted_local_model
    if runtime.config.resolved_backend() == "local" and not _noted_local_model:
        _noted_local_model = True
        print(
            "agentrt: no GOOGLE_API_KEY/GEMINI_API_KEY set, so replies come from the "
            "small embedded local model. Set a key and restart the kernel to use Gemini."
        )
