"""One kernel session per shell: the notebook's runtime, its agents, the data cells' tool
sources and the lab comm, in one object found by `KernelSession.of(shell)`.

The session outlives the runtimes it starts and a reload of the extension: the names its
cells used and the tool sources they built stay as long as the kernel (see `agents`).
Reading it never starts, prints, shuts down or replaces anything; `ensure_runtime()` is
the one call that starts a runtime (or replaces one whose local model server died), made
by the magics where a cell or command needs one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..config import RuntimeConfig
from ..errors import StoreError
from ..handle import ChatHandle, TurnResult
from ..runtime import AgentRuntime
from .agents import NotebookAgents, UsedName

if TYPE_CHECKING:
    from .kerneltools import KernelTools
    from .labcomm import LabComms

_ATTRIBUTE = "_agentrt_session"


@dataclass
class Run:
    """One `%%agent` turn and the task rendering it."""

    agent: str
    handle: ChatHandle
    future: concurrent.futures.Future[TurnResult]
    out: str | None


def _not_loaded() -> RuntimeConfig:
    raise UsageError("agentrt_jupyter is not loaded: run %load_ext agentrt_jupyter")


class KernelSession:
    """The agentrt state of one IPython shell (one kernel)."""

    @classmethod
    def of(cls, shell: Any) -> KernelSession:
        """The session of `shell`, made on first use and kept on the shell itself."""
        session = getattr(shell, _ATTRIBUTE, None)
        if isinstance(session, KernelSession):
            return session
        session = cls(shell)
        if shell is not None:
            setattr(shell, _ATTRIBUTE, session)
        return session

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.runtime_config: Callable[[], RuntimeConfig] = _not_loaded
        """What the next runtime is made with (the magics' settings, set when they load)."""
        self.warm_up: concurrent.futures.Future[None] | None = None
        """The warm-up of the runtime started last (at `%load_ext`, or after a cell that
        changed a runtime setting)."""
        self.background: dict[str, Run] = {}
        """The `--background` turns not waited for yet, by agent name."""
        self.lab_comm: LabComms | None = None
        self._agents: NotebookAgents | None = None
        self._names: dict[str, dict[str, UsedName]] = {}
        self._tools: KernelTools | None = None
        self._said: set[str] = set()
        self._no_namespace: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = "no runtime" if self.runtime is None else "runtime running"
        return f"<KernelSession {state}, {len(self.background)} background turns>"

    @property
    def user_ns(self) -> dict[str, Any]:
        """The notebook's namespace (an empty one outside a shell)."""
        namespace = getattr(self.shell, "user_ns", None)
        return namespace if isinstance(namespace, dict) else self._no_namespace

    @property
    def runtime(self) -> AgentRuntime | None:
        """The runtime if one is running (None otherwise; nothing is started)."""
        agents = self._agents
        if agents is None or agents.runtime.closed:
            return None
        return agents.runtime

    @property
    def agents(self) -> NotebookAgents | None:
        """The notebook's agents on the running runtime (None without one)."""
        return self._agents if self.runtime is not None else None

    @property
    def tools(self) -> KernelTools | None:
        """The data cells' tool sources, if a cell used any (see `kernel_tools`)."""
        return self._tools

    def ensure_runtime(self) -> AgentRuntime:
        """The kernel's one runtime, started if none runs.

        If the local model server it spawned has died (killed or crashed), the runtime is
        replaced; the agents this kernel used resume from the store at their next cell."""
        return self.ensure_agents().runtime

    def ensure_agents(self) -> NotebookAgents:
        """The notebook's agents on the kernel's runtime (`ensure_runtime`)."""
        current = self._agents
        server = current.runtime.local_server if current is not None else None
        if server is not None and not server.running:
            print("agentrt: the local model server stopped; restarting it")
            self.shutdown_runtime()
            current = None
        if current is None or current.runtime.closed:
            config = self.runtime_config()
            with _store_warning_left_to_us():
                runtime = AgentRuntime(config)
            self._say_store_problem(runtime.store_problem)
            current = self._agents = NotebookAgents(runtime, self.names(config.namespace))
        return current

    def start_warm_up(self) -> concurrent.futures.Future[None]:
        """Start the runtime and, in the background, what its first turn would wait for."""
        warm_up = self.warm_up = self.ensure_runtime().start_warm_up()
        return warm_up

    def names(self, namespace: str) -> dict[str, UsedName]:
        """The names the cells of this kernel used in `namespace`, by name (kept across
        runtimes and reloads, as long as the kernel)."""
        return self._names.setdefault(namespace, {})

    def kernel_tools(self) -> KernelTools:
        """The data cells' tool sources, made on first use (for the notebook's namespace)."""
        from .kerneltools import KernelTools

        namespace = self.user_ns
        if self._tools is None or self._tools.namespace is not namespace:
            self._tools = KernelTools(namespace)
        return self._tools

    def shutdown_runtime(self, timeout: float = 10.0) -> None:
        """Close the MCP sessions, forget the background turns and stop the runtime."""
        agents, self._agents = self._agents, None
        self.background.clear()
        if agents is None:
            return
        if self._tools is not None:
            self._tools.close_sources(agents.runtime)
        agents.runtime.shutdown(timeout)

    def _say_store_problem(self, problem: StoreError | None) -> None:
        """One line, once per problem: conversations are not stored, which file, what to do."""
        if problem is None or str(problem) in self._said:
            return
        self._said.add(str(problem))
        print(
            f"agentrt: conversations are not stored: {problem}; in a notebook, "
            "%config AgentMagics.store_path = '' runs without a store",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _store_warning_left_to_us() -> Iterator[None]:
    """While a runtime starts, drop its log line about a store fault: the session says it
    once, with the notebook's way to fix it."""
    logger = logging.getLogger("agentrt_jupyter")
    quiet = _NoStoreWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _NoStoreWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, StoreError) for arg in args)
