"""The notebook's agents, keyed once by name: what cells gave them, and their live handles.

What an agent sees is what the notebook shows. A name a cell of this kernel has used
belongs to the kernel: its cells continue that conversation until `%agent delete`, also
after `%agent shutdown NAME`, a new runtime or a reload of the extension (the
conversation comes back from the store). A name the kernel has not used yet starts a
fresh conversation, so a restarted kernel never continues a stored one silently: that
takes `%agent resume NAME` or `%%agent NAME --resume`.

The record of used names lives as long as the kernel (`KernelSession.names`); the handles are
those of one runtime (`NotebookAgents`), so no stale handle outlives its runtime. The
magics parse a cell and call in here; what to create, resume or reconfigure is decided
here alone.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from ..config import AgentConfig, agent_config
from ..errors import AgentNotFound, AgentShutDown, ConversationInUse
from ..handle import ChatHandle
from ..runtime import Agent, AgentRuntime
from .listing import GONE

ENV_SESSION = "JPY_SESSION_NAME"
DEFAULT_NAMESPACE = "default"
_MAX_NAMESPACE = 4096
_noted_local_model = False


def notebook_namespace(
    environ: Mapping[str, str], user_ns: Mapping[str, Any], connection_file: str | None
) -> str:
    """The notebook a kernel runs, as the namespace of its agents' conversations.

    jupyter_server sets $JPY_SESSION_NAME to the notebook's path (ipykernel copies it to
    `__session__`), VS Code sets `__vsc_ipynb_file__`; otherwise the kernel's connection
    file (kept across restarts by the kernel manager) stands for the notebook, and
    outside a kernel everything shares "default".
    """
    for value in (
        environ.get(ENV_SESSION),
        user_ns.get("__session__"),
        user_ns.get("__vsc_ipynb_file__"),
        connection_file,
    ):
        if isinstance(value, str) and value.strip() and "\0" not in value:
            return value[-_MAX_NAMESPACE:]
    return DEFAULT_NAMESPACE


def connection_file() -> str | None:
    """The kernel's connection file, if this runs in an ipykernel (not imported otherwise)."""
    connect = sys.modules.get("ipykernel.connect")
    if connect is None:
        return None
    try:
        return str(connect.get_connection_file())
    except Exception:  # not in a running kernel, or the file is gone
        return None


@dataclass
class UsedName:
    """A name a cell of this kernel used, with the settings the cells gave it so far.

    `cache` is the reply cache setting the magics configured it with; None for an agent
    they did not configure (made with the Python API, or resumed with its stored
    settings), whose config is left as it is.
    """

    settings: dict[str, Any]
    cache: bool | None


class NotebookAgents:
    """The agents of one notebook on one runtime, by name."""

    def __init__(self, runtime: AgentRuntime, used: dict[str, UsedName]) -> None:
        self.runtime = runtime
        self.used = used
        self._live: dict[str, Agent] = {}

    def settings(self, name: str) -> dict[str, Any]:
        """The settings cells gave NAME so far (empty for an agent no cell configured)."""
        known = self.used.get(name)
        return dict(known.settings) if known is not None else {}

    def chat(
        self,
        name: str,
        settings: dict[str, Any],
        text: str,
        *,
        cache: bool,
        new: bool = False,
        resume: bool = False,
        refresh: bool = False,
    ) -> tuple[Agent, ChatHandle]:
        """Start a turn; a warm cell of an unchanged agent is one runtime round trip."""
        agent = self._live.get(name)
        if agent is not None and not new and self._unchanged(name, settings, cache):
            try:
                return agent, self.runtime.chat(agent, text, refresh=refresh)
            except (AgentNotFound, AgentShutDown):  # stopped behind the notebook's back
                del self._live[name]
        agent = self.ensure(name, settings, cache=cache, new=new, resume=resume)
        return agent, self.runtime.chat(agent, text, refresh=refresh)

    def ensure(
        self,
        name: str,
        settings: dict[str, Any],
        *,
        cache: bool,
        new: bool = False,
        resume: bool = False,
        take_over: bool = False,
    ) -> Agent:
        """The live agent NAME with these settings: created, resumed or reconfigured.

        A name this kernel used is resumed (or started afresh if nothing is stored); an
        unused one starts a fresh conversation unless `resume` asks for the stored one."""
        known = self.used.get(name)
        merged = {**(known.settings if known is not None else {}), **settings}
        config = agent_config(None, {**merged, "name": name, "reply_cache": cache})
        # Whether the magics configure it; else it keeps the config it has (or had stored).
        ours = bool(settings) or (known is not None and known.cache is not None)
        if self._is_live(name):
            if (known is None and not settings) or self._unchanged(name, settings, cache):
                agent = self.runtime.agent(name)
                ours = known is not None and known.cache is not None
            else:
                agent, ours = self._reconfigure(name, config), True
        elif resume:
            agent = self._resume(name, config if ours else None, take_over, cache)
        elif known is not None:
            agent = self._continue(name, config if ours else None, cache)
        else:
            _note_local_model(self.runtime)
            agent, ours = self.runtime.create_agent(config, fresh=True), True
        self._live[name] = agent
        self.used[name] = UsedName(merged, cache if ours else None)
        if new:
            self.runtime.clear_history(agent)
        return agent

    def resume(self, name: str, *, cache: bool, take_over: bool = False) -> Agent | None:
        """`%agent resume NAME`: bring back its stored conversation (None: NAME is live)."""
        if self._is_live(name):
            return None
        return self.ensure(name, {}, cache=cache, resume=True, take_over=take_over)

    def named(self, name: str) -> Agent:
        """A live agent, or one this kernel used (resumed); stored ones need `resume`."""
        if self._is_live(name):
            return self.runtime.agent(name)
        known = self.used.get(name)
        if known is not None:
            return self.ensure(name, {}, cache=bool(known.cache))
        if name in self.runtime.stored_conversations():
            raise UsageError(
                f"no agent {name!r} in this kernel: %agent resume {name} brings back its "
                "stored conversation"
            )
        raise UsageError(f"no agent {name!r}: start one with a %%agent {name} cell")

    def live_names(self) -> list[str]:
        return [info.name for info in self.runtime.agents() if info.state not in GONE]

    def shutdown(self, name: str) -> None:
        """Stop NAME; its stored conversation is kept, and the next cell resumes it."""
        self.runtime.shutdown_agent(name)
        self._live.pop(name, None)

    def delete(self, name: str) -> None:
        """Stop NAME and erase its stored conversation; the next cell starts it afresh."""
        self.runtime.delete(name)
        self._live.pop(name, None)
        self.used.pop(name, None)

    def _unchanged(self, name: str, settings: dict[str, Any], cache: bool) -> bool:
        known = self.used.get(name)
        if known is None:
            return False
        same_cache = known.cache is None or known.cache == cache
        return same_cache and {**known.settings, **settings} == known.settings

    def _reconfigure(self, name: str, config: AgentConfig) -> Agent:
        """New settings for a live agent: the same agent (id, conversation, stored record)
        takes them from its next turn, so nothing that follows it sees it go (refused
        while a turn of it runs)."""
        note = self.runtime.reconfigure(name, config)
        if note is not None:
            print(f"agentrt: {name}: {note}")
        return self.runtime.agent(name)

    def _continue(self, name: str, config: AgentConfig | None, cache: bool) -> Agent:
        """A name this kernel used: its stored conversation, or a fresh one if none is kept."""
        if self._stores():
            try:
                return self._take(name, config, take_over=False, cache=cache)
            except AgentNotFound:  # deleted elsewhere, or another store now
                pass
        return self.runtime.create_agent(config or agent_config(None, {"name": name}), fresh=True)

    def _resume(self, name: str, config: AgentConfig | None, take_over: bool, cache: bool) -> Agent:
        """What `resume` asks for: the stored conversation, or a UsageError saying why not."""
        if not self._stores():
            raise UsageError(
                f"cannot resume {name!r}: conversations are not stored in this kernel "
                "(%agent config shows the store)"
            )
        try:
            return self._take(name, config, take_over, cache=cache)
        except AgentNotFound:
            raise UsageError(
                f"no stored conversation {name!r} in this notebook: %agent list --stored "
                "shows what can be resumed (--all: in every notebook)"
            ) from None

    def _take(
        self, name: str, config: AgentConfig | None, take_over: bool, cache: bool | None = None
    ) -> Agent:
        """Resume NAME: with `config` whole, or its stored settings (and this cache setting)."""
        overrides = {"reply_cache": cache} if config is None and cache is not None else {}
        try:
            return self.runtime.resume(name, config, take_over=take_over, **overrides)
        except ConversationInUse as exc:
            raise UsageError(in_use_message(exc)) from None

    def _stores(self) -> bool:
        runtime = self.runtime
        return runtime.config.store_location is not None and runtime.store_problem is None

    def _is_live(self, name: str) -> bool:
        return name in self.live_names()


def in_use_message(error: ConversationInUse) -> str:
    """`ConversationInUse` as the notebook says it: who holds it, and how to take over."""
    return (
        f"agent {error.name!r} is being written by another kernel or process, "
        f"{error.holder}: stop it, use another name, or take the conversation over with "
        f"%agent resume {error.name} --take-over"
    )


def _note_local_model(runtime: AgentRuntime) -> None:
    """Say once per kernel that replies come from the small local model, and how to change it."""
    global _noted_local_model
    if runtime.config.resolved_backend() == "local" and not _noted_local_model:
        _noted_local_model = True
        print(
            "agentrt: no GOOGLE_API_KEY/GEMINI_API_KEY set, so replies come from the "
            "small embedded local model. Set a key and restart the kernel to use Gemini."
        )
