"""`%%agent` on the notebook's data: `--tools`, `--confirm`, `--schema`, `--out-frame`,
`--tool-timeout` and `--map`, resolved against the user namespace.

`--tools f,mod.g,@data,@python,mcp:NAME` (or `none`) becomes the agent's `tools` setting
and persists for its later cells like its other settings, until a cell changes it. The
tool objects are built once and reused (the `@data` set, each agent's `@python`, each MCP
server's tools), so a cell that repeats its `--tools` leaves the agent as it is. An agent
given tools by cells gets its `Approver` as `confirm_tool`: `--confirm` (every tool),
`--confirm f,g` or `--confirm none` set what it asks about, and `@python` asks always.
`--schema S` asks this cell's reply in the shape S: the reply is checked, shown as JSON
(a list also as a table), and `--out` / `--out-frame` get the parsed value / a DataFrame;
a cell without `--schema` asks for free text again.

What is safe without asking: the `@data` tools only read; everything else the model may
call is the user's own code (their functions, their MCP servers), which runs unasked
unless `--confirm` covers it; model-written code (`@python`) never runs unasked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import keyword
import logging
import shlex
import sys
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..config import AgentConfig
from ..errors import AgentError, ReplyInvalid, Timeout, TurnCancelled, UsageProblem
from ..handle import TurnResult
from ..tools import Tool, as_tool
from .approval import APPROVAL_TIMEOUT as APPROVAL_TIMEOUT
from .approval import (
    Answer,
    Approver,
    Claim,
    Policy,
    answer_pending,
    clicks_while_awaiting,
    kernel_version,
    wait_for_question,
)
from .magics import EVERY_TOOL, LONGEST_SECONDS, is_seconds
from .toolview import ToolCallsView

if TYPE_CHECKING:
    import pandas as pd

    from ..mcp_tools import McpSource
    from ..runtime import AgentRuntime
    from .display import TurnView
    from .magics import AgentMagics, CellOptions

log = logging.getLogger("agentrt_jupyter")

DATA = "@data"
PYTHON = "@python"
NO_TOOLS = "none"
MCP_PREFIX = "mcp:"
MCP_LOAD_TIMEOUT = 60.0
MCP_CLOSE_TIMEOUT = 10.0
SLICE = 0.05


@dataclass(frozen=True)
class DataOptions:
    """The data flags of a `%%agent` line, as written (checked by `data_options`)."""

    tools: str | None = None
    confirm: str | None = None
    schema: str | None = None
    out_frame: str | None = None
    map: str | None = None
    tool_timeout: float | None = None


NO_DATA = DataOptions()


def data_options(args: Any) -> DataOptions:
    """The data flags of a parsed `%%agent` line; a mistake is a UsageError."""
    options = DataOptions(
        tools=args.tools,
        confirm=args.confirm,
        schema=args.schema,
        out_frame=args.out_frame,
        map=args.map,
        tool_timeout=args.tool_timeout,
    )
    if options.out_frame is not None and not _is_variable(options.out_frame):
        raise UsageError(f"--out-frame needs a variable name, got {options.out_frame!r}")
    if options.out_frame is not None and options.schema is None:
        raise UsageError("--out-frame holds the rows of a --schema reply: give --schema too")
    timeout = options.tool_timeout
    if timeout is not None and not is_seconds(timeout):
        raise UsageError(
            f"--tool-timeout is in seconds, between 0 and {LONGEST_SECONDS}, got {timeout:g}"
        )
    if options.map is not None:
        for flag, given in (
            ("NAME", args.name),
            ("--background", args.background),
            ("--new", args.new),
            ("--resume", args.resume),
            ("--out-frame", options.out_frame),
            ("--confirm", options.confirm),
        ):
            if given:
                raise UsageError(
                    f"--map runs a fresh agent on every row, unattended: leave out {flag}"
                )
    return options


def _is_variable(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def lookup(namespace: Mapping[str, Any], dotted: str, what: str) -> Any:
    """`a.b.c` in the namespace (names and attributes only, nothing is evaluated)."""
    head, *rest = dotted.split(".")
    if not all(_is_variable(part) for part in (head, *rest)):
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
    """The tool sources of one kernel: the `@data` set, each agent's `@python` tool and
    approver, the MCP servers in use, and where each agent's tools came from. Lives as
    long as the kernel (like the names its cells used), across runtimes and reloads."""

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
            if item == DATA:
                found, origin = self._data_tools(), DATA
            elif item == PYTHON and agent is not None:
                found, origin = [self._python_tool(agent)], PYTHON
            elif item.startswith(MCP_PREFIX):
                found, origin = self._mcp(item[len(MCP_PREFIX) :], runtime), item
            elif item.startswith("@"):
                raise UsageError(f"--tools: no toolset {item!r} (there are @data and @python)")
            else:
                found, origin = [self._function(item)], f"function {item}"
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
                self._mcp_tools[name] = load_tools(source, runtime.loop, timeout=MCP_LOAD_TIMEOUT)
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
        close_source(source, runtime.loop, timeout=MCP_CLOSE_TIMEOUT)
    except (AgentError, RuntimeError) as exc:
        log.warning("closing the MCP server %r failed: %s", source.name, exc)


_kernels: dict[int, KernelTools] = {}


def close_sources(shell: Any, runtime: AgentRuntime) -> None:
    """Close the kernel's MCP sessions before `runtime` shuts down."""
    kernel = _kernels.get(id(shell))
    if kernel is not None:
        kernel.close_sources(runtime)


def cancel_maps(runtime: AgentRuntime) -> list[str]:
    """`%agent cancel`: stop the map runs too; what was stopped, as words."""
    engine = sys.modules.get("agentrt_jupyter.batch.engine")
    if engine is None:  # never imported (it imports pandas): no map has run
        return []
    count = int(engine.cancel_maps(runtime))
    return [f"{count} map run{'s' if count != 1 else ''}"] if count else []


def kernel_tools(shell: Any, namespace: dict[str, Any]) -> KernelTools:
    """The tool sources of the kernel of `shell`."""
    key = id(shell)
    if key not in _kernels or _kernels[key].namespace is not namespace:
        _kernels[key] = KernelTools(namespace)
    return _kernels[key]


@dataclass
class CellData:
    """What one `%%agent` cell's data flags resolved to, and what its turn does with them."""

    settings: dict[str, Any] = field(default_factory=dict)
    """AgentConfig fields to set on the agent (tools, confirm_tool, response_schema, ...)."""
    schema: Any = None
    out: str | None = None
    out_frame: str | None = None
    namespace: dict[str, Any] = field(default_factory=dict)
    approver: Approver | None = None
    policy: Policy | None = None
    """The approver's policy once this cell's turn starts (set in `follow`, not before:
    a cell that fails to start changes nothing)."""
    claim: Claim | None = None
    why_not: str | None = None
    """Why this cell cannot take an approval (None: it can)."""
    background: bool = False

    @property
    def fmt(self) -> str | None:
        """How the reply is shown when no --format is given: JSON for a schema."""
        return "json" if self.schema is not None else None

    @property
    def keeps_out(self) -> bool:
        """--out is this cell's parsed reply, not the TurnResult."""
        return self.schema is not None

    def follow(
        self, view: TurnView, handle: Any, loop: asyncio.AbstractEventLoop
    ) -> Coroutine[Any, Any, TurnResult]:
        """What the cell's task runs instead of `view.follow(handle)` (main thread, in the
        cell: the tool-call display opens here, before the reply's)."""
        calls = None
        if self.approver is not None:
            calls = ToolCallsView(view, why_not=self.why_not)
            calls.open()
            if self.policy is not None:
                self.approver.policy = self.policy
            if self.claim is not None:
                self.approver.bind(self.claim, handle, calls, loop)
        if calls is None and self.schema is None:
            return view.follow(handle)
        return self._follow(view, calls, handle)

    async def _follow(self, view: TurnView, calls: ToolCallsView | None, handle: Any) -> TurnResult:
        if calls is None:
            result = await view.follow(handle)
        else:
            result, _ = await asyncio.gather(view.follow(handle), calls.follow(handle))
        if self.schema is None or result.status != "complete" or result.error is not None:
            return result
        return await self._structured(view, result)

    async def _structured(self, view: TurnView, result: TurnResult) -> TurnResult:
        """Parse the reply: set --out / --out-frame and show a list as a table; a reply
        that does not fit is the turn's ReplyInvalid (raised by the cell, or shown in it)."""
        try:
            value, frame = await asyncio.to_thread(self._parse, result.text)
        except ReplyInvalid as exc:
            exc.agent = result.agent
            if self.background:
                from .display import error_bundle

                _show(view, "error", error_bundle(exc))
            return dataclasses.replace(result, error=exc)
        if self.out is not None:
            self.namespace[self.out] = value
        if frame is not None:
            if self.out_frame is not None:
                self.namespace[self.out_frame] = frame
            if isinstance(value, list):
                _show(view, "table", _frame_bundle(frame))
        return result

    def _parse(self, text: str) -> tuple[Any, pd.DataFrame | None]:
        from ..schema import parse_reply, to_frame

        value = parse_reply(text, self.schema)
        wants_frame = self.out_frame is not None or isinstance(value, list)
        return value, (to_frame(value, self.schema) if wants_frame else None)


def _frame_bundle(frame: pd.DataFrame) -> dict[str, Any]:
    return {"text/html": frame.to_html(max_rows=50), "text/plain": frame.to_string(max_rows=50)}


def _show(view: TurnView, what: str, bundle: dict[str, Any]) -> None:
    """One more display in the turn's cell, below its reply."""
    if view.live:
        view._publish(f"{view.reply_id}-{what}", bundle, new=True)
    else:
        from .display import display

        display(bundle, raw=True)


def prepare(magics: AgentMagics, options: CellOptions, *, awaiting: bool) -> CellData:
    """Resolve a cell's data flags before its turn starts; every problem is a UsageError."""
    data = options.data
    namespace = magics.user_ns
    kernel = kernel_tools(magics.shell, namespace)
    agents = magics.agents
    known = agents.settings(options.name)
    cell = CellData(out=options.out, out_frame=data.out_frame, namespace=namespace)
    cell.background = options.background
    approver = kernel.approver(options.name)
    approver.timeout = _approval_timeout(magics)
    policy = approver.policy
    settings = cell.settings
    if data.tools is not None:
        tools = kernel.resolve(data.tools, options.name, agents.runtime)
        _check_tools(tools)
        settings["tools"] = tuple(tools)
        settings["confirm_tool"] = approver.confirm if tools else None
        asks_itself = frozenset(t.name for t in tools if t.requires_approval)
        policy = dataclasses.replace(policy, asks_itself=asks_itself)
    tools_now = settings["tools"] if "tools" in settings else tuple(known.get("tools") or ())
    ours = (settings.get("confirm_tool", known.get("confirm_tool"))) == approver.confirm
    if data.confirm is not None:
        policy = _policy(policy, data.confirm, tools_now if ours else ())
    if data.tool_timeout is not None:
        settings["tool_timeout"] = data.tool_timeout
    if data.schema is not None:
        cell.schema = _schema(namespace, data.schema)
        settings["response_schema"] = cell.schema
    elif known.get("response_schema") is not None:
        settings["response_schema"] = None
    if ours and tools_now:
        cell.approver, cell.policy = approver, policy
        cell.why_not = _why_not(magics, options.background, awaiting)
        if policy.asks() and cell.why_not is not None:
            raise UsageError(
                f"agent {options.name!r} asks before tool calls ({policy.text()}), and "
                f"{cell.why_not}"
            )
        cell.claim = approver.claim()
    elif data.confirm is not None or data.tools is not None:
        approver.policy = policy  # no turn of ours will ask: nothing to wait for
    return cell


def _approval_timeout(magics: AgentMagics) -> float:
    timeout = float(magics.approval_timeout)
    if not is_seconds(timeout):
        raise UsageError(
            "AgentMagics.approval_timeout is in seconds, between 0 and "
            f"{LONGEST_SECONDS}, got {timeout:g}"
        )
    return timeout


def _check_tools(tools: list[Tool]) -> None:
    try:
        AgentConfig(tools=tools)
    except UsageProblem as exc:
        raise UsageError(f"--tools: {exc}") from None


def _policy(policy: Policy, confirm: str, tools: tuple[Any, ...]) -> Policy:
    """`policy` with what `--confirm` asks for."""
    names = [t.name for t in tools if isinstance(t, Tool)]
    if not names:
        raise UsageError(
            "--confirm asks before the calls of the tools given with --tools, and this agent "
            "has none from the cells: add --tools"
        )
    if confirm == EVERY_TOOL:
        return dataclasses.replace(policy, every_tool=True, tools=frozenset())
    chosen = [item.strip() for item in confirm.split(",") if item.strip()]
    if chosen == [NO_TOOLS]:
        return dataclasses.replace(policy, every_tool=False, tools=frozenset())
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        raise UsageError(
            f"--confirm {confirm}: no tool named {', '.join(map(repr, unknown)) or repr('')} "
            f"(its tools: {', '.join(names)}); write the agent's NAME before --confirm, "
            "and --confirm alone for every tool"
        )
    return dataclasses.replace(policy, every_tool=False, tools=frozenset(chosen))


def _why_not(magics: AgentMagics, background: bool, awaiting: bool) -> str | None:
    """Why this cell's turn could not be answered while it runs (None: it can)."""
    if getattr(magics.shell, "kernel", None) is None:
        return "this IPython is not a Jupyter kernel, so there are no buttons to answer with"
    if background:
        return None
    if not awaiting:
        return (
            "this cell blocks the kernel, so no click is handled until it ends: run it as an "
            "awaiting cell (%autoawait on) or with --background"
        )
    if not clicks_while_awaiting():
        return (
            f"ipykernel {kernel_version()} handles clicks only after the cell ends: run it "
            "with --background (then Approve in the cell, or %agent approve), or use "
            "ipykernel >= 7.4"
        )
    return None


def _schema(namespace: Mapping[str, Any], dotted: str) -> Any:
    from ..schema import json_schema

    value = lookup(namespace, dotted, "--schema")
    try:
        json_schema(value)
    except UsageProblem as exc:
        raise UsageError(f"--schema {dotted}: {exc}") from None
    return value


def map_options(magics: AgentMagics, options: CellOptions) -> tuple[Any, dict[str, Any]]:
    """The frame and the options of `%%agent --map DF`; a mistake is a UsageError."""
    data = options.data
    assert data.map is not None
    frame = lookup(magics.user_ns, data.map, "--map")
    if type(frame).__name__ != "DataFrame":
        raise UsageError(f"--map needs a pandas DataFrame, {data.map} is {type(frame).__name__}")
    settings: dict[str, Any] = dict(options.settings)
    if data.tools is not None:
        if PYTHON in [item.strip() for item in data.tools.split(",")]:
            raise UsageError("--map rows run unattended: @python, which asks every time, cannot")
        kernel = kernel_tools(magics.shell, magics.user_ns)
        tools = kernel.resolve(data.tools, None, magics.runtime)
        _check_tools(tools)
        settings["tools"] = tools
    if data.tool_timeout is not None:
        settings["tool_timeout"] = data.tool_timeout
    if data.schema is not None:
        settings["schema"] = _schema(magics.user_ns, data.schema)
    if options.refresh:
        settings["refresh"] = True
    return frame, settings


async def amap(magics: AgentMagics, options: CellOptions, template: str) -> None:
    """`%%agent --map DF [--out RESULT]` in an awaiting cell (its Cancel button works)."""
    from .batchview import map_cell

    frame, settings = map_options(magics, options)
    try:
        await map_cell(
            magics.runtime,
            frame,
            template,
            out=options.out,
            namespace=magics.user_ns,
            **settings,
        )
    except asyncio.CancelledError:
        kept = f"; the finished rows are in {options.out}" if options.out else ""
        message = f"interrupted: the map over {options.data.map} was cancelled{kept}"
        raise _short(TurnCancelled(message)) from None
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None


def bmap(magics: AgentMagics, options: CellOptions, template: str) -> None:
    """`%%agent --map` as a blocking cell (the Cancel button answers after it ends)."""
    from ..batch.engine import map_frame

    frame, settings = map_options(magics, options)
    try:
        result = map_frame(magics.runtime, frame, template, progress=True, **settings)
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None
    if options.out is not None:
        magics.user_ns[options.out] = result


def _short(error: AgentError) -> AgentError:
    from .display import shorten

    return shorten(error, str(error))


def run_command(magics: AgentMagics, line: str) -> Any:
    """`%agent tools|approve|deny|mcp ...`."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read the options: {exc}; close the quote") from None
    command, rest = words[0], words[1:]
    if command == "mcp":
        return _mcp_command(magics, rest)
    if len(rest) > 1:
        raise UsageError(f"%agent {command} takes at most one agent NAME, got {' '.join(rest)}")
    name = rest[0] if rest else None
    if command == "tools":
        return _tools_frame(magics, name or magics.default_agent)
    return _answer(magics, name, "approve" if command == "approve" else "deny")


def _tools_frame(magics: AgentMagics, name: str) -> Any:
    """The tools NAME was given by cells, with their declarations."""
    import json

    import pandas as pd

    from .magics import _as_shown

    settings = magics.agents.settings(name)
    if not settings and name not in magics.agents.live_names():
        raise UsageError(f"no agent {name!r}: start one with a %%agent {name} cell")
    tools = [t for t in settings.get("tools") or () if isinstance(t, Tool)]
    kernel = kernel_tools(magics.shell, magics.user_ns)
    origins = kernel.origins.get(name, {})
    approver = kernel.approvers.get(name)
    ours = approver is not None and settings.get("confirm_tool") == approver.confirm
    if not tools:
        print(f"{name}: no tools from the cells (give some with %%agent {name} --tools f,g)")

    def approval(tool: Tool) -> str:
        if tool.requires_approval:
            return "always asks"
        asks = ours and approver is not None and approver.policy.covers(tool.name)
        return "asks" if asks else "no"

    frame = pd.DataFrame(
        {
            "tool": pd.array([t.name for t in tools], dtype="string"),
            "from": pd.array([origins.get(t.name, "function") for t in tools], dtype="string"),
            "approval": pd.array([approval(t) for t in tools], dtype="string"),
            "description": pd.array([t.description for t in tools], dtype="string"),
            "parameters": pd.array(
                [json.dumps(t.parameters, ensure_ascii=False) for t in tools], dtype="string"
            ),
        }
    )
    return _as_shown(frame)


def _answer(magics: AgentMagics, name: str | None, answer: Answer) -> None:
    """Answer the oldest open question (of NAME); while a turn runs that has not asked
    yet, wait for its question (up to the approval timeout; interrupt to stop)."""
    deadline = time.monotonic() + _approval_timeout(magics)
    while True:
        request = answer_pending(name, answer)
        if request is not None:
            said = {"approve": "approved", "deny": "denied"}[answer]
            print(f"{said}: {request.agent}'s call {request.describe()}")
            return
        if not _may_ask(magics, name) or time.monotonic() >= deadline:
            whose = f"of {name!r} " if name else ""
            print(f"no tool call {whose}is waiting for approval")
            return
        wait_for_question(SLICE)


def _may_ask(magics: AgentMagics, name: str | None) -> bool:
    """Whether a running turn (of NAME) may still ask: its agent's approver asks."""
    live = magics.live_runtime
    if live is None:
        return False
    kernel = kernel_tools(magics.shell, magics.user_ns)
    names = [name] if name else magics.agents.live_names()
    for agent in names:
        approver = kernel.approvers.get(agent)
        settings = magics.agents.settings(agent)
        if approver is None or settings.get("confirm_tool") != approver.confirm:
            continue
        try:
            if approver.policy.asks() and not live.is_idle(agent):
                return True
        except AgentError:
            continue
    return False


def _mcp_command(magics: AgentMagics, words: list[str]) -> Any:
    """`%agent mcp add NAME -- command args…`, `add NAME URL`, `list`, `remove NAME`."""
    from ..mcp_tools import McpServerSpec, add_server, declared_servers, remove_server

    usage = (
        "%agent mcp add NAME -- command args… (stdio), %agent mcp add NAME URL (streamable "
        "HTTP), %agent mcp list, %agent mcp remove NAME"
    )
    kernel = kernel_tools(magics.shell, magics.user_ns)
    action = words[0] if words else "list"
    try:
        if action == "list" and len(words) <= 1:
            return _servers_frame(declared_servers(), kernel)
        if action == "add" and len(words) >= 3:
            name, spec_words = words[1], words[2:]
            if spec_words[0] == "--":
                spec_words = spec_words[1:]
            elif not (len(spec_words) == 1 and spec_words[0].startswith(("http://", "https://"))):
                raise UsageError(f"write the server's command after --: {usage}")
            spec = McpServerSpec.parse(spec_words)
            add_server(name, spec)
            kernel.forget_source(name, magics.live_runtime)
            print(f"MCP server {name!r} declared: {spec!r}; use it with --tools mcp:{name}")
            return None
        if action == "remove" and len(words) == 2:
            removed = remove_server(words[1])
            kernel.forget_source(words[1], magics.live_runtime)
            print(f"MCP server {words[1]!r} removed ({removed!r})")
            return None
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None
    except AgentError as exc:  # StoreError: the settings file
        raise UsageError(str(exc)) from None
    raise UsageError(f"usage: {usage}")


def _servers_frame(servers: Mapping[str, Any], kernel: KernelTools) -> Any:
    import pandas as pd

    from .magics import _as_shown

    names = sorted(servers)
    frame = pd.DataFrame(
        {
            "name": pd.array(names, dtype="string"),
            "transport": pd.array(
                ["http" if servers[n].url else "stdio" for n in names], dtype="string"
            ),
            "server": pd.array([repr(servers[n]) for n in names], dtype="string"),
            "connected": pd.array(
                [bool(kernel.sources.get(n) and kernel.sources[n].connected) for n in names],
                dtype="boolean",
            ),
        }
    )
    return _as_shown(frame)
