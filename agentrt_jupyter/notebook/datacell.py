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
import shlex
import sys
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..config import AgentConfig
from ..errors import AgentError, ReplyInvalid, TurnCancelled, UsageProblem
from ..frames import as_shown
from ..handle import TurnResult
from ..tools import Tool
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
from .cellline import EVERY_TOOL, CellOptions, DataOptions, check_name, check_seconds
from .kerneltools import NO_TOOLS, PYTHON, KernelTools, lookup
from .session import KernelSession
from .toolview import ToolCallsView
from .transcript import plural

if TYPE_CHECKING:
    import pandas as pd

    from ..runtime import AgentRuntime
    from .display import TurnView

__all__ = ["DataOptions"]

SLICE = 0.05


def cancel_maps(runtime: AgentRuntime) -> list[str]:
    """`%agent cancel`: stop the map runs too; what was stopped, as words."""
    engine = sys.modules.get("agentrt_jupyter.batch.engine")
    if engine is None:  # never imported (it imports pandas): no map has run
        return []
    count = int(engine.cancel_maps(runtime))
    return [plural(count, "map run")] if count else []


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

    def follow(self, view: TurnView, handle: Any) -> Coroutine[Any, Any, TurnResult]:
        """What the cell's task runs instead of `view.follow(handle)` (main thread, in the
        cell: the tool-call display opens here, before the reply's)."""
        calls = None
        if self.approver is not None:
            calls = ToolCallsView(view, why_not=self.why_not)
            calls.open()
            if self.policy is not None:
                self.approver.policy = self.policy
            if self.claim is not None:
                self.approver.bind(self.claim, handle, calls)
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


def prepare(
    session: KernelSession, options: CellOptions, *, approval_timeout: float, awaiting: bool
) -> CellData:
    """Resolve a cell's data flags before its turn starts; every problem is a UsageError."""
    data = options.data
    namespace = session.user_ns
    kernel = session.kernel_tools()
    agents = session.ensure_agents()
    known = agents.settings(options.name)
    cell = CellData(out=options.out, out_frame=data.out_frame, namespace=namespace)
    cell.background = options.background
    approver = kernel.approver(options.name)
    approver.timeout = checked_approval_timeout(approval_timeout)
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
        cell.why_not = _why_not(session, options.background, awaiting)
        if policy.asks() and cell.why_not is not None:
            raise UsageError(
                f"agent {options.name!r} asks before tool calls ({policy.text()}), and "
                f"{cell.why_not}"
            )
        cell.claim = approver.claim()
    elif data.confirm is not None or data.tools is not None:
        approver.policy = policy  # no turn of ours will ask: nothing to wait for
    return cell


def checked_approval_timeout(value: float) -> float:
    """`AgentMagics.approval_timeout`, or a UsageError if it is out of range."""
    return check_seconds("AgentMagics.approval_timeout", float(value))


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


def _why_not(session: KernelSession, background: bool, awaiting: bool) -> str | None:
    """Why this cell's turn could not be answered while it runs (None: it can)."""
    if getattr(session.shell, "kernel", None) is None:
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


def map_options(session: KernelSession, options: CellOptions) -> tuple[Any, dict[str, Any]]:
    """The frame and the options of `%%agent --map DF` (`--filter`, `--classify`); a
    mistake is a UsageError."""
    data = options.data
    assert data.frame_operator is not None
    operator, name = data.frame_operator
    frame = lookup(session.user_ns, name, f"--{operator}")
    if type(frame).__name__ != "DataFrame":
        raise UsageError(f"--{operator} needs a pandas DataFrame, {name} is {type(frame).__name__}")
    settings: dict[str, Any] = dict(options.settings)
    if data.tools is not None:
        if PYTHON in [item.strip() for item in data.tools.split(",")]:
            raise UsageError(
                f"--{operator} rows run unattended: @python, which asks every time, cannot"
            )
        tools = session.kernel_tools().resolve(data.tools, None, session.ensure_runtime())
        _check_tools(tools)
        settings["tools"] = tools
    if data.tool_timeout is not None:
        settings["tool_timeout"] = data.tool_timeout
    if data.schema is not None:
        settings["schema"] = _schema(session.user_ns, data.schema)
    if data.classify is not None:
        settings["labels"] = data.label_list
    if options.refresh:
        settings["refresh"] = True
    return frame, settings


async def amap(session: KernelSession, options: CellOptions, template: str) -> None:
    """`%%agent --map DF [--out RESULT]` (`--filter`, `--classify`) in an awaiting cell
    (its Cancel button works)."""
    from .batchview import map_cell, operator_cell

    frame, settings = map_options(session, options)
    assert options.data.frame_operator is not None
    operator, name = options.data.frame_operator
    runtime = session.ensure_runtime()
    out, namespace = options.out, session.user_ns
    try:
        if operator == "map":
            await map_cell(runtime, frame, template, out=out, namespace=namespace, **settings)
        else:
            await operator_cell(
                runtime, operator, frame, template, out=out, namespace=namespace, **settings
            )
    except asyncio.CancelledError:
        kept = f"; the finished rows are in {out}" if out and operator == "map" else ""
        message = f"interrupted: the {operator} over {name} was cancelled{kept}"
        raise _short(TurnCancelled(message)) from None
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None


def bmap(session: KernelSession, options: CellOptions, template: str) -> None:
    """`%%agent --map` (`--filter`, `--classify`) as a blocking cell (the Cancel button
    answers after it ends)."""
    from ..operators import operator as find_operator

    frame, settings = map_options(session, options)
    assert options.data.frame_operator is not None
    operator, _ = options.data.frame_operator
    runtime = session.ensure_runtime()
    try:
        result = find_operator(operator).run(runtime, frame, template, progress=True, **settings)
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None
    if options.out is not None:
        session.user_ns[options.out] = result


def _short(error: AgentError) -> AgentError:
    from .display import shorten

    return shorten(error, str(error))


def run_command(
    session: KernelSession, line: str, *, default_agent: str, approval_timeout: float
) -> Any:
    """`%agent tools|approve|deny|mcp ...` (the magics' settings as keywords)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read the options: {exc}; close the quote") from None
    command, rest = words[0], words[1:]
    if command == "mcp":
        return _mcp_command(session, rest)
    if len(rest) > 1:
        raise UsageError(f"%agent {command} takes at most one agent NAME, got {rest!r}")
    name = rest[0] if rest else None
    if name is not None:
        check_name(name)
    if command == "tools":
        return _tools_frame(session, name or default_agent)
    deadline = time.monotonic() + checked_approval_timeout(approval_timeout)
    return _answer(session, name, "approve" if command == "approve" else "deny", deadline)


def _tools_frame(session: KernelSession, name: str) -> Any:
    """The tools NAME was given by cells, with their declarations."""
    import json

    import pandas as pd

    agents = session.ensure_agents()
    settings = agents.settings(name)
    if not settings and name not in agents.live_names():
        raise UsageError(f"no agent {name!r}: start one with a %%agent {name} cell")
    tools = [t for t in settings.get("tools") or () if isinstance(t, Tool)]
    kernel = session.kernel_tools()
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
    return as_shown(frame)


def _answer(session: KernelSession, name: str | None, answer: Answer, deadline: float) -> None:
    """Answer the oldest open question (of NAME); while a turn runs that has not asked
    yet, wait for its question (up to the approval timeout; interrupt to stop)."""
    while True:
        request = answer_pending(name, answer)
        if request is not None:
            said = {"approve": "approved", "deny": "denied"}[answer]
            print(f"{said}: {request.agent}'s call {request.describe()}")
            return
        if not _may_ask(session, name) or time.monotonic() >= deadline:
            whose = f"of {name!r} " if name else ""
            print(f"no tool call {whose}is waiting for approval")
            return
        wait_for_question(SLICE)


def _may_ask(session: KernelSession, name: str | None) -> bool:
    """Whether a running turn (of NAME) may still ask: its agent's approver asks."""
    live, agents = session.runtime, session.agents
    if live is None or agents is None:
        return False
    kernel = session.kernel_tools()
    names = [name] if name else agents.live_names()
    for agent in names:
        approver = kernel.approvers.get(agent)
        settings = agents.settings(agent)
        if approver is None or settings.get("confirm_tool") != approver.confirm:
            continue
        try:
            if approver.policy.asks() and not live.is_idle(agent):
                return True
        except AgentError:
            continue
    return False


def _mcp_command(session: KernelSession, words: list[str]) -> Any:
    """`%agent mcp add NAME -- command args…`, `add NAME URL`, `list`, `remove NAME`."""
    from ..mcp_tools import McpServerSpec, add_server, declared_servers, remove_server

    usage = (
        "%agent mcp add NAME -- command args… (stdio), %agent mcp add NAME URL (streamable "
        "HTTP), %agent mcp list, %agent mcp remove NAME"
    )
    kernel = session.kernel_tools()
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
            kernel.forget_source(name, session.runtime)
            print(f"MCP server {name!r} declared: {spec!r}; use it with --tools mcp:{name}")
            return None
        if action == "remove" and len(words) == 2:
            removed = remove_server(words[1])
            kernel.forget_source(words[1], session.runtime)
            print(f"MCP server {words[1]!r} removed ({removed!r})")
            return None
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None
    except AgentError as exc:  # StoreError: the settings file
        raise UsageError(str(exc)) from None
    raise UsageError(f"usage: {usage}")


def _servers_frame(servers: Mapping[str, Any], kernel: KernelTools) -> Any:
    import pandas as pd

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
    return as_shown(frame)
