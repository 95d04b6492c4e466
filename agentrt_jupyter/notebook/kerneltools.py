"""The tool sources of one kernel, for `%%agent --tools`: the `@data` set, each agent's
`@python` tool and approver, the MCP servers in use, and where each agent's tools came
from. Held by the kernel's session (`KernelSession.kernel_tools`), across runtimes and
reloads of the extension, like the names its cells used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..errors import AgentError, Timeout, UsageProblem
from ..tools import Tool, as_tool
from .approval import Approver
from .cellline import is_variable

if TYPE_CHECKING:
    from ..mcp_tools import McpSource
    from ..runtime import AgentRuntime

log = logging.getLogger("agentrt_jupyter")

DATA = "@data"
PYTHON = "@python"
NO_TOOLS = "none"
MCP_PREFIX = "mcp:"
MCP_LOAD_TIMEOUT = 60.0
MCP_CLOSE_TIMEOUT = 10.0


def lookup(namespace: Mapping[str, Any], dotted: str, what: str) -> Any:
    """`a.b.c` in the namespace (names and attributes only, nothing is evaluated)."""
    head, *rest = dotted.split(".")
    if not all(is_variable(part) for part in (head, *rest)):
        raise UsageError(f"{what}: {dotted!r} is not a name like f or module.f")
    if head not in namespace:
        raise UsageError(f"{what}: no {head!r} in the notebook's namespace (define it first)")
    value = namespace[head]
    for depth, part in enumerate(rest, 1):
        path = ".".join([head, *rest[:depth]])
        try:
            value = getattr(value, part)
        except AttributeError:
            raise UsageError(f"{what}: {path} does not exist") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a property may raise anything, SystemExit included
            raise UsageError(f"{what}: reading {path} raised {type(exc).__name__}") from None
    return value


class KernelTools:
    """The tool sources of one kernel (module docstring)."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.approvers: dict[str, Approver] = {}
        self.sources: dict[str, McpSource] = {}
        self.origins: dict[str, dict[str, str]] = {}
        self._data: list[Tool] | None = None
        self._python: dict[str, Tool] = {}
        self._mcp_tools: dict[str, list[Tool]] = {}

    def approver(self, agent: str) -> Approver:
        if agent not in self.approvers:
            self.approvers[agent] = Approver(agent)
        return self.approvers[agent]

    def resolve(self, spec: str, agent: str | None, runtime: AgentRuntime) -> list[Tool]:
        """The tools `--tools spec` names, in order, for `agent` (None: the rows of a map,
        which have no `@python`); a UsageError says what is wrong."""
        items = [item.strip() for item in spec.split(",") if item.strip()]
        if not items:
            raise UsageError("--tools needs names: f,g, @data, @python, mcp:NAME or none")
        if NO_TOOLS in items:
            if len(items) > 1:
                raise UsageError("--tools none removes every tool: give it alone")
            if agent is not None:
                self.origins[agent] = {}
            return []
        tools: list[Tool] = []
        origins: dict[str, str] = {}
        for item in dict.fromkeys(items):
            found, origin = self._item(item, agent, runtime)
            for tool in found:
                if tool.name in origins:
                    raise UsageError(
                        f"--tools: two tools are named {tool.name!r} ({origins[tool.name]} and "
                        f"{origin}): rename one"
                    )
                origins[tool.name] = origin
                tools.append(tool)
        if agent is not None:
            self.origins[agent] = origins
        return tools

    def _item(self, item: str, agent: str | None, runtime: AgentRuntime) -> tuple[list[Tool], str]:
        """The tools one item of `--tools` names, and where they come from."""
        if item == DATA:
            return self._data_tools(), DATA
        if item == PYTHON and agent is not None:
            return [self._python_tool(agent)], PYTHON
        if item.startswith(MCP_PREFIX):
            return self._mcp(item[len(MCP_PREFIX) :], runtime), item
        if item.startswith("@"):
            raise UsageError(f"--tools: no toolset {item!r} (there are @data and @python)")
        return [self._function(item)], f"function {item}"

    def _function(self, dotted: str) -> Tool:
        value = lookup(self.namespace, dotted, "--tools")
        try:
            return as_tool(value)
        except UsageProblem as exc:
            raise UsageError(f"--tools {dotted}: {exc}") from None

    def _data_tools(self) -> list[Tool]:
        if self._data is None:
            from ..datatools import data_tools

            self._data = data_tools(self.namespace)
        return self._data

    def _python_tool(self, agent: str) -> Tool:
        if agent not in self._python:
            from ..pythontool import python_tool

            approve = self.approver(agent).approve_python
            self._python[agent] = python_tool(self.namespace, approve=approve)
        return self._python[agent]

    def _mcp(self, name: str, runtime: AgentRuntime) -> list[Tool]:
        from ..mcp_tools import McpSource, load_tools, server_spec

        source = self.sources.get(name)
        if source is None:
            try:
                source = McpSource(name, server_spec(name))
            except AgentError as exc:  # undeclared (InvalidConfig), unreadable (StoreError)
                raise UsageError(f"--tools mcp:{name}: {exc}") from None
            self.sources[name] = source
        if name not in self._mcp_tools:
            try:
                self._mcp_tools[name] = load_tools(source, runtime, timeout=MCP_LOAD_TIMEOUT)
            except (AgentError, Timeout) as exc:
                raise UsageError(f"--tools mcp:{name}: {exc}") from None
        return self._mcp_tools[name]

    def forget_source(self, name: str, runtime: AgentRuntime | None) -> None:
        """Close and drop MCP server `name` (re-declared or removed)."""
        source = self.sources.pop(name, None)
        self._mcp_tools.pop(name, None)
        if source is not None and runtime is not None:
            _close_source(source, runtime)

    def close_sources(self, runtime: AgentRuntime) -> None:
        """Close the MCP sessions on `runtime`'s loop before it stops; the servers' tools
        stay usable and reconnect on the next runtime."""
        for source in list(self.sources.values()):
            _close_source(source, runtime)


def _close_source(source: McpSource, runtime: AgentRuntime) -> None:
    from ..mcp_tools import close_source

    if runtime.closed:
        return
    try:
        close_source(source, runtime, timeout=MCP_CLOSE_TIMEOUT)
    except (AgentError, RuntimeError) as exc:
        log.warning("closing the MCP server %r failed: %s", source.name, exc)
