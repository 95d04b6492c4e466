"""The `%agent` commands (but the data cells', in `datacell`): each parsed line
(`cellline.CommandLine`) is one call into the kernel's session and its agents, handed to
a view (a frame from `listing` / `frames`, or a line of text).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

from IPython.core.error import UsageError

from ..config import RuntimeConfig, redacted_url
from ..runtime import Agent, AgentRuntime
from . import cellrun
from .cellline import CommandLine
from .listing import size_text
from .session import KernelSession
from .transcript import plural

ENV_BACKEND = "AGENTRT_BACKEND"
"""Overrides `AgentMagics.backend` (a kernel's environment chooses the backend)."""


class Settings(Protocol):
    """The magics' settings the commands read (`AgentMagics`, `%config AgentMagics`)."""

    default_agent: str
    cache: bool
    default_format: str
    updates_per_second: float
    live_after: float
    await_cells: bool
    shell: Any

    def runtime_config(self) -> RuntimeConfig: ...


class AgentCommands:
    """`%agent COMMAND [NAME]`: one method per command (`run` picks it)."""

    def __init__(self, session: KernelSession, settings: Settings, help_text: str) -> None:
        self.session = session
        self.settings = settings
        self.help_text = help_text
        self.handlers: dict[str, Callable[[CommandLine], Any]] = {
            "help": self.help,
            "runtime": self.runtime,
            "list": self.list_agents,
            "resume": self.resume,
            "usage": self.usage,
            "history": self.history,
            "ledger": self.ledger,
            "cancel": self.cancel,
            "wait": self.wait,
            "reset": self.reset,
            "shutdown": self.shutdown,
            "delete": self.delete,
            "cache": self.cache,
            "config": self.config,
        }

    def run(self, command: CommandLine) -> Any:
        """Run one parsed `%agent` line."""
        return self.handlers[command.command](command)

    def _named(self, name: str | None) -> Agent:
        """A live agent, or one this kernel used (NAME defaults to the default agent)."""
        return self.session.ensure_agents().named(name or self.settings.default_agent)

    def help(self, command: CommandLine) -> None:
        print(self.help_text)

    def runtime(self, command: CommandLine) -> AgentRuntime:
        runtime = self.session.ensure_runtime()
        namespace = runtime.config.namespace
        print(f"agentrt: this notebook's conversations are in namespace {namespace!r}")
        return runtime

    def list_agents(self, command: CommandLine) -> Any:
        """The agents (or the stored conversations) as a frame, shown whole but without
        wrapping."""
        from ..frames import as_shown
        from .listing import agents_frame, stored_frame

        runtime = self.session.ensure_runtime()
        if not (command.stored or command.everywhere):
            return as_shown(agents_frame(runtime.agents()))
        if runtime.store_problem is not None or runtime.config.store_location is None:
            print("agentrt: conversations are not stored in this kernel (see %agent config)")
        conversations = runtime.conversations(everywhere=command.everywhere)
        return as_shown(stored_frame(conversations, everywhere=command.everywhere))

    def resume(self, command: CommandLine) -> None:
        name = command.name
        if name is None:
            raise UsageError(
                "%agent resume needs the NAME of a stored conversation: "
                "%agent list --stored shows them"
            )
        agents = self.session.ensure_agents()
        agent = agents.resume(name, cache=self.settings.cache, take_over=command.take_over)
        if agent is None:
            print(f"{name}: already live in this kernel, its conversation is the cells' one")
            return
        runtime = agents.runtime
        history = runtime.history(agent)
        cut = (
            " (its last reply was cut off: incomplete)"
            if history and (history[-1].status == "incomplete")
            else ""
        )
        turns, messages = plural(runtime.turn_count(agent), "turn"), plural(len(history), "message")
        print(f"{name}: resumed, {turns}, {messages}{cut}")

    def usage(self, command: CommandLine) -> Any:
        """One row per turn: the full typed frame, shown compactly (`frames.compact`)."""
        from ..frames import compact, usage_frame

        return compact(usage_frame(self._named(command.name)), "usage")

    def history(self, command: CommandLine) -> Any:
        from ..frames import compact, history_frame

        return compact(history_frame(self._named(command.name)), "history")

    def ledger(self, command: CommandLine) -> Any:
        from ..frames import compact, ledger_frame

        return compact(ledger_frame(self.session.ensure_runtime()), "ledger")

    def cancel(self, command: CommandLine) -> None:
        agents = self.session.ensure_agents()
        names = [command.name] if command.name else agents.live_names()
        stopped = [n for n in names if agents.runtime.cancel(n)]
        if command.name is None:
            from . import datacell

            stopped += datacell.cancel_maps(agents.runtime)
        print(f"cancelled: {', '.join(stopped)}" if stopped else "no turn was running")

    def wait(self, command: CommandLine) -> None:
        name, background = command.name, self.session.background
        if name is not None and name not in background:
            raise UsageError(f"no --background turn of {name!r} to wait for")
        runs = [background.pop(name)] if name else list(background.values())
        if name is None:
            background.clear()
        for run in runs:
            cellrun.conclude(run, cellrun.block(run), self.session.user_ns)

    def reset(self, command: CommandLine) -> None:
        agent = self._named(command.name)
        self.session.ensure_runtime().clear_history(agent)
        print(f"{agent.name}: conversation cleared")

    def shutdown(self, command: CommandLine) -> None:
        name = command.name
        if name is None:
            self.session.shutdown_runtime()
            print("runtime shut down; the next %%agent cell starts a new one")
            return
        self.session.ensure_agents().shutdown(name)
        print(f"{name}: shut down (its stored conversation is kept)")

    def delete(self, command: CommandLine) -> None:
        name = command.name
        if name is None:
            raise UsageError("%agent delete needs the NAME of the agent to erase")
        self.session.ensure_agents().delete(name)
        self.session.background.pop(name, None)
        print(f"{name}: deleted")

    def cache(self, command: CommandLine) -> None:
        if command.name not in (None, "clear"):
            raise UsageError(
                "%agent cache shows the reply cache and %agent cache clear empties it; "
                f"it takes no agent name, got {command.name!r}"
            )
        runtime = self.session.ensure_runtime()
        if command.name == "clear":
            runtime.cache_clear()
            print("reply cache cleared")
            return
        stats = runtime.cache_stats()
        state = "on" if self.settings.cache else "off (%config AgentMagics.cache = True)"
        replies, hits = plural(stats["entries"], "reply", "replies"), plural(stats["hits"], "hit")
        size = size_text(stats["bytes"])
        print(f"reply cache: {replies}, {size}, {hits}; {state} for %%agent cells")

    def config(self, command: CommandLine) -> None:
        print("\n".join(self.config_lines()))

    def config_lines(self) -> list[str]:
        """The effective settings, one line each, and where the backend comes from."""
        settings = self.settings
        config = settings.runtime_config()
        source = f"${ENV_BACKEND}" if os.environ.get(ENV_BACKEND) else "AgentMagics.backend"
        ipykernel = sys.modules.get("ipykernel")
        live = self.session.runtime
        problem = live.store_problem if live is not None else None
        location = config.store_location
        store = "none" if location is None else redacted_url(str(location))
        if problem is not None:
            store += f" (not used: {problem})"
        elif location is None:
            store += " (conversations are not kept)"
        awaiting = settings.await_cells and bool(getattr(settings.shell, "autoawait", False))
        return [
            f"backend: {config.backend} (from {source}), resolved: {config.resolved_backend()}",
            f"default model: {config.model_for(None)}",
            f"notebook (namespace): {config.namespace}",
            f"store: {store}",
            f"reply cache for %%agent cells: {'on' if settings.cache else 'off'}",
            f"default agent: {settings.default_agent}",
            f"format: {settings.default_format}, updates/s: {settings.updates_per_second:g}, "
            f"live after: {settings.live_after:g} s",
            f"await cells: {awaiting}",
            f"ipykernel: {getattr(ipykernel, '__version__', 'not running in a kernel')}",
        ]
