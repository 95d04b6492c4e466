"""`%%agent` (chat with an agent in a cell) and `%agent` (list, usage, cancel, …).

A `%%agent` cell starts a turn on the kernel's runtime and shows it with a `TurnView`.
By default the extension rewrites the cell into a top-level `await` of `acell`, so the
kernel's loop keeps handling widget clicks and interrupts while the reply streams, and
Run All / nbclient wait for it. Called any other way (`%autoawait off`,
`run_cell_magic`), the cell waits in short slices instead.

The data flags (`--tools`, `--schema`, `--map`, …) and their `%agent` commands are
`datacell`'s, imported by the first cell or command that uses them: a plain cell, the
first one of a notebook above all, does not pay for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import keyword
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from IPython.core import magic
from IPython.core import magic_arguments as margs
from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class, no_var_expand
from traitlets import Bool, Enum, Float, TraitError, Unicode, observe, validate

from ..config import (
    BACKENDS,
    RuntimeConfig,
    agent_config,
    check_agent_name,
    default_store_path,
    runtime_config,
)
from ..errors import AgentError, ConversationInUse, StoreError, TurnCancelled, UsageProblem
from ..handle import WAIT_SLICE, ChatHandle, TurnResult
from ..runtime import Agent, AgentRuntime
from .agents import NotebookAgents, in_use_message, kernel_names, notebook_namespace
from .display import FORMATS, OPEN_DELAY, OnceHint, TurnView, plural, shorten
from .interpolate import interpolate as expand

if TYPE_CHECKING:
    from .datacell import CellData, DataOptions

ENV_BACKEND = "AGENTRT_BACKEND"
SETTLE_TIMEOUT = 10.0
"""After an interrupt, how long to wait for the turn to end so its partial reply shows."""
AWAIT_HINT = "other cells wait until this reply ends; %%agent --background lets them run"
"""Said once per kernel, in the status line of the first foreground turn that streams."""
COMMANDS = (
    "list",
    "resume",
    "usage",
    "history",
    "ledger",
    "cancel",
    "shutdown",
    "reset",
    "delete",
    "wait",
    "cache",
    "config",
    "runtime",
    "help",
)
_RUNTIME_SETTINGS = ("backend", "default_model", "store_path", "base_url")
DATA_FLAGS = ("tools", "confirm", "schema", "out_frame", "map", "tool_timeout")
"""The `%%agent` options `datacell` resolves (`DataOptions` fields)."""
DATA_COMMANDS = ("tools", "approve", "deny", "mcp")
"""The `%agent` commands `datacell` runs."""
EVERY_TOOL = "*"
"""`--confirm` without a value."""
APPROVAL_TIMEOUT = 120.0
"""The default of `AgentMagics.approval_timeout` (`approval.APPROVAL_TIMEOUT`)."""
LONGEST_SECONDS = 86400
"""The longest tool or approval timeout a cell accepts."""
TOOLS_HELP = (
    "Tools for the agent, kept for its later cells: f,mod.g (functions of the namespace), "
    "@data (read-only looks at the notebook's DataFrames), @python (runs code, always asks "
    "first), mcp:NAME (a declared MCP server), or none."
)
CONFIRM_HELP = (
    "Ask before each tool call (Approve / Deny in the cell); --confirm f,g: only before "
    "these; --confirm none: never. Write NAME before it."
)
SCHEMA_HELP = (
    "Ask this reply in the shape S (a pydantic model, dataclass, TypedDict or JSON-schema "
    "dict of the namespace): checked, shown as JSON, and --out holds the parsed value."
)
MAP_HELP = (
    "Run the cell, a template with {column} placeholders, over every row of DataFrame DF "
    "(--out RESULT: the result frame)."
)
_DATACELL = f"{__package__}.datacell"
_FLAGS = {
    "stored": ("--stored", "list"),
    "everywhere": ("--all", "list"),
    "take_over": ("--take-over", "resume"),
}
"""`%agent` options that belong to one command: (how it is written, the command)."""
_F = TypeVar("_F", bound=Callable[..., Any])
_margs: Any = margs


def magic_arguments(name: str = "agent") -> Callable[[_F], _F]:
    """IPython's decorator; `name` is what help shows (not the method's name)."""
    return cast("Callable[[_F], _F]", _margs.magic_arguments(name=name))


def argument(*args: Any, **kwargs: Any) -> Callable[[_F], _F]:
    return cast("Callable[[_F], _F]", _margs.argument(*args, **kwargs))


def cell_magic(name: str) -> Callable[[_F], _F]:
    return cast("Callable[[_F], _F]", magic.cell_magic(name))


def line_magic(name: str) -> Callable[[_F], _F]:
    return cast("Callable[[_F], _F]", magic.line_magic(name))


def parse_line(magic: Callable[..., Any], line: str) -> Any:
    """A magic's options, split like a shell line: quotes group words and are removed
    (IPython's own `parse_argstring` keeps them, so `--system "be brief"` sent the quotes).
    Unbalanced quotes are a UsageError like every other mistake."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:  # shlex: "No closing quotation", "No escaped character"
        raise UsageError(f"cannot read the options: {exc}; close the quote") from None
    parser: Any = getattr(magic, "parser")  # noqa: B009 - set by @magic_arguments
    return parser.parse_args(argv)


@dataclass(frozen=True)
class CellOptions:
    """A `%%agent` line, parsed and checked: `settings` are AgentConfig fields."""

    name: str
    settings: dict[str, Any]
    new: bool
    resume: bool
    refresh: bool
    out: str | None
    fmt: str | None
    background: bool
    interpolate: bool
    data_flags: DataOptions | None = None
    """The data flags; None when the line has none (then `datacell` is not imported)."""

    @property
    def data(self) -> DataOptions:
        """The data flags, all unset if the line has none (for `datacell`)."""
        from . import datacell

        return self.data_flags or datacell.NO_DATA


@dataclass(frozen=True)
class CommandLine:
    """A `%agent` line, parsed and checked."""

    command: str
    name: str | None
    stored: bool = False
    everywhere: bool = False
    take_over: bool = False


@dataclass
class Run:
    """One `%%agent` turn and the task rendering it."""

    agent: str
    handle: ChatHandle
    future: concurrent.futures.Future[TurnResult]
    out: str | None


@magics_class
class AgentMagics(Magics):
    """The agentrt magics; their settings are traitlets (`%config AgentMagics`)."""

    backend = Enum(
        list(BACKENDS),
        default_value="auto",
        help="Model backend: auto (Gemini with GOOGLE_API_KEY/GEMINI_API_KEY, else the "
        "embedded local model), gemini, local, or scripted (deterministic test replies). "
        f"${ENV_BACKEND} overrides it.",
    ).tag(config=True)
    default_model = Unicode(
        None, allow_none=True, help="Model of new agents (default: the backend's)."
    ).tag(config=True)
    store_path = Unicode(
        None,
        allow_none=True,
        help="SQLite file keeping conversations, for %agent resume and the reply cache "
        "(default: $AGENTRT_HOME/conversations.sqlite3, else "
        "~/.local/share/agentrt-jupyter/conversations.sqlite3; empty string: keep nothing).",
    ).tag(config=True)
    cache = Bool(
        True,
        help="Replay the recorded reply when a %%agent cell sends exactly what was sent "
        "before (model, settings, system instruction, tools, schema and the whole "
        "conversation), so Run All after a restart calls no model and shows the same "
        "replies; --refresh forces a live call.",
    ).tag(config=True)
    base_url = Unicode(
        None, allow_none=True, help="A Gemini-compatible server to use instead of Google's."
    ).tag(config=True)
    default_agent = Unicode(
        "default", help="The agent a `%%agent` cell without NAME talks to."
    ).tag(config=True)
    default_format = Enum(
        list(FORMATS), default_value="markdown", help="How replies are shown."
    ).tag(config=True)
    updates_per_second = Float(
        20.0, help="Most display updates per second while a reply streams (at most 20)."
    ).tag(config=True)
    live_after = Float(
        OPEN_DELAY,
        help="Seconds a reply may take before its cell shows it live, with a Cancel "
        "button; a reply done sooner is shown once, whole (as cheap as a plain display).",
    ).tag(config=True)
    await_cells = Bool(
        True,
        help="Run %%agent cells as awaiting cells (top-level await), so widget clicks "
        "and interrupts are handled while they stream. Needs %autoawait on.",
    ).tag(config=True)
    interpolate = Bool(
        True, help="Replace {expr} in %%agent cells by its value in the user namespace."
    ).tag(config=True)
    show_thoughts = Bool(False, help="Show the model's thoughts while they stream.").tag(
        config=True
    )
    approval_timeout = Float(
        APPROVAL_TIMEOUT,
        help="Seconds a tool call waits for Approve / Deny before it counts as denied.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self._agents: NotebookAgents | None = None
        self._said: set[str] = set()
        self.background: dict[str, Run] = {}
        self.await_hint = OnceHint(AWAIT_HINT)
        self.warm_up: concurrent.futures.Future[None] | None = None
        """The warm-up of the runtime started last (at `%load_ext`, or after a cell that
        changed a runtime setting)."""
        self._rewarm = False
        super().__init__(shell, **kwargs)

    @property
    def user_ns(self) -> dict[str, Any]:
        shell: Any = self.shell
        return cast("dict[str, Any]", shell.user_ns) if shell is not None else {}

    def namespace(self) -> str:
        """This notebook's name for its conversations (see `notebook_namespace`)."""
        return notebook_namespace(os.environ, self.user_ns, _connection_file())

    @validate("updates_per_second")
    def _check_rate(self, proposal: Any) -> float:
        rate = float(proposal["value"])
        if not 0 < rate <= 20:
            raise TraitError(f"updates_per_second must be in (0, 20], got {rate}")
        return rate

    @validate("live_after")
    def _check_live_after(self, proposal: Any) -> float:
        delay = float(proposal["value"])
        if not 0 <= delay <= 60:
            raise TraitError(f"live_after must be in [0, 60] seconds, got {delay}")
        return delay

    @observe(*_RUNTIME_SETTINGS)
    def _runtime_setting_changed(self, change: Any) -> None:
        """A new backend or store needs a new runtime; agents come back from the store."""
        if self.live_runtime is not None:
            self.shutdown_runtime()
            self._rewarm = True

    def rewarm_after_cell(self, _result: Any = None) -> None:
        """IPython's post_run_cell: a cell that changed runtime settings (often several
        `%config` lines) shut the warmed-up runtime down; start the new one and its
        warm-up now, once, so the next `%%agent` cell does not pay for it."""
        if not self._rewarm or self.live_runtime is not None:
            self._rewarm = False
            return
        self._rewarm = False
        try:
            runtime = self.runtime
        except UsageError:  # a bad setting: the next %%agent cell reports it
            return
        self.warm_up = runtime.start_warm_up()

    def runtime_config(self) -> RuntimeConfig:
        backend = os.environ.get(ENV_BACKEND) or self.backend
        source = f" (from ${ENV_BACKEND})" if os.environ.get(ENV_BACKEND) else ""
        try:
            if self.store_path is None:
                store: Path | None = default_store_path()
            else:
                store = Path(self.store_path).expanduser() if self.store_path else None
            return runtime_config(
                {
                    "backend": backend,
                    "default_model": self.default_model or None,
                    "base_url": self.base_url or None,
                    "store_path": store,
                    "namespace": self.namespace(),
                }
            )
        except UsageProblem as exc:
            raise UsageError(f"{exc}{source}") from None
        except RuntimeError as exc:  # expanduser: no home directory for ~user
            raise UsageError(f"store_path: {exc}") from None

    @property
    def agents(self) -> NotebookAgents:
        """The notebook's agents on the kernel's one runtime, started on first need.

        If the local model server it spawned has died (killed or crashed), the runtime is
        replaced; the agents this kernel used resume from the store at their next cell."""
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
            used = kernel_names(self.shell, config.namespace)
            current = self._agents = NotebookAgents(runtime, used)
        return current

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

    @property
    def runtime(self) -> AgentRuntime:
        """The kernel's one runtime, started on first need (see `agents`)."""
        return self.agents.runtime

    @property
    def live_runtime(self) -> AgentRuntime | None:
        """The runtime if one is running, without starting one."""
        runtime = self._agents.runtime if self._agents is not None else None
        return runtime if runtime is not None and not runtime.closed else None

    def shutdown_runtime(self, timeout: float = 10.0) -> None:
        agents, self._agents = self._agents, None
        self.background.clear()
        if agents is not None:
            datacell = sys.modules.get(_DATACELL)
            if datacell is not None:  # else no cell opened an MCP session
                datacell.close_sources(self.shell, agents.runtime)
            agents.runtime.shutdown(timeout)

    @magic_arguments("%agent")  # help's usage line then reads "%%agent [...]"
    @argument(
        "name",
        nargs="?",
        help="The agent (created on first use in this kernel; a restarted kernel starts "
        "it fresh, see --resume). Default: AgentMagics.default_agent.",
    )
    @argument("--model", help="Model of the agent (applies from this turn on).")
    @argument("--system", metavar="TEXT", help="System instruction (applies from this turn on).")
    @argument("--temperature", type=float, help="Sampling temperature, 0 to 2.")
    @argument("--max-tokens", type=int, metavar="N", help="Most output tokens per reply.")
    @argument("--new", action="store_true", help="Start a fresh conversation (clear history).")
    @argument(
        "--resume",
        action="store_true",
        help="Continue NAME's stored conversation (from before a kernel restart), then "
        "send the cell.",
    )
    @argument(
        "--refresh",
        action="store_true",
        help="Call the model even if the reply cache holds this request's reply.",
    )
    @argument("--out", metavar="VAR", help="Store the TurnResult in variable VAR.")
    @argument("--format", choices=FORMATS, help="Show the reply as markdown (default), ...")
    @argument(
        "--background",
        action="store_true",
        help="Return at once; the reply streams into this cell while other cells run.",
    )
    @argument("--no-interpolate", action="store_true", help="Send {braces} as written.")
    @argument("--tools", metavar="TOOLS", help=TOOLS_HELP)
    @argument("--confirm", nargs="?", const=EVERY_TOOL, metavar="TOOLS", help=CONFIRM_HELP)
    @argument("--schema", metavar="S", help=SCHEMA_HELP)
    @argument("--out-frame", metavar="VAR", help="With --schema: the reply's rows as a DataFrame.")
    @argument("--tool-timeout", type=float, metavar="S", help="Seconds one tool call may take.")
    @argument("--map", metavar="DF", help=MAP_HELP)
    @no_var_expand
    @cell_magic("agent")
    def agent_cell(self, line: str, cell: str) -> None:
        """Send the cell to an agent and stream its reply here.

        `{expr}` in the cell is replaced by its value in the user namespace (`{{x}}` is a
        literal `{x}`). Interrupt or the Cancel button stop the turn; the partial reply
        is kept in history, marked cancelled. Errors stop Run All.
        """
        if "--map" in line and _maps(options := self.parse_cell_line(line)):
            from . import datacell

            datacell.bmap(self, options, cell)
            return
        run = self.start(line, cell)
        if run is not None:
            self.conclude(run, self.block(run))

    async def acell(self, line: str, cell: str) -> None:
        """`%%agent` as an awaiting cell: the kernel handles clicks while the reply streams."""
        if "--map" in line and _maps(options := self.parse_cell_line(line)):
            from . import datacell

            await datacell.amap(self, options, cell)
            return
        run = self.start(line, cell, awaiting=True)
        if run is not None:
            self.conclude(run, await self.wait_async(run))

    def parse_cell_line(self, line: str) -> CellOptions:
        """The `%%agent` line, checked before anything runs: every problem is a UsageError."""
        args = parse_line(self.agent_cell, line)
        if args.out is not None and (not args.out.isidentifier() or keyword.iskeyword(args.out)):
            raise UsageError(f"--out needs a variable name, got {args.out!r}")
        settings = {
            key: value
            for key, value in (
                ("model", args.model),
                ("system_instruction", args.system),
                ("temperature", args.temperature),
                ("max_output_tokens", args.max_tokens),
            )
            if value is not None
        }
        name = args.name or self.default_agent
        if args.new and args.resume:
            raise UsageError(
                "--new starts a fresh conversation and --resume continues the stored one: pick one"
            )
        try:
            agent_config(None, {**settings, "name": name})
        except UsageProblem as exc:
            raise UsageError(str(exc)) from None
        return CellOptions(
            name=name,
            settings=settings,
            new=args.new,
            resume=args.resume,
            refresh=args.refresh,
            out=args.out,
            fmt=args.format,
            background=args.background,
            interpolate=self.interpolate and not args.no_interpolate,
            data_flags=_data_options(args),
        )

    def start(self, line: str, cell: str, *, awaiting: bool = False) -> Run | None:
        """Parse, create or resume the agent, show the displays and start the turn.

        Returns the run to wait for, or None for a background run."""
        options = self.parse_cell_line(line)
        if not cell.strip():
            raise UsageError("the cell is empty: write the prompt below the %%agent line")
        cell = cell.strip("\n").rstrip()
        settings = dict(options.settings)
        if options.interpolate:
            missing: list[str] = []
            cell = expand(cell, self.user_ns, missing)
            if settings.get("system_instruction"):
                settings["system_instruction"] = expand(
                    settings["system_instruction"], self.user_ns, missing
                )
            _note_missing(missing)
        data = self._cell_data(options, awaiting=awaiting)
        if data is not None:
            settings.update(data.settings)
        agents = self.agents
        try:
            agent, handle = agents.chat(
                options.name,
                settings,
                cell,
                cache=self.cache,
                new=options.new,
                resume=options.resume,
                refresh=options.refresh,
            )
        except ConversationInUse as exc:
            raise UsageError(in_use_message(exc)) from None
        except UsageProblem as exc:
            raise UsageError(str(exc)) from None
        view = TurnView(
            self.shell,
            fmt=options.fmt or (data.fmt if data is not None else None) or self.default_format,
            rate=self.updates_per_second,
            show_thoughts=self.show_thoughts,
            background=options.background,
            answered_by=answered_by(agents.runtime.config),
            hint=None if options.background else self.await_hint,
            open_delay=self.live_after,
        )
        if data is None:
            follow = view.follow(handle)
        else:
            follow = data.follow(view, handle, agents.runtime.loop)  # opens the tool calls' display
        view.show(handle)
        future = asyncio.run_coroutine_threadsafe(follow, agents.runtime.loop)
        keeps_out = data is not None and data.keeps_out
        run = Run(agent.name, handle, future, None if keeps_out else options.out)
        if not options.background:
            return run
        self.background[agent.name] = run
        if options.out is not None:
            future.add_done_callback(lambda done: self._store_out(run, done))
        return None

    def _cell_data(self, options: CellOptions, *, awaiting: bool) -> CellData | None:
        """The cell's data flags resolved (`datacell.prepare`), or None for a plain cell
        while no cell of this kernel used them: then no agent has tools, an approver or a
        schema from the cells, and there is nothing to resolve. An approval_timeout out of
        range still goes to `prepare`, which says so."""
        valid = is_seconds(float(self.approval_timeout))
        if options.data_flags is None and _DATACELL not in sys.modules and valid:
            return None
        from . import datacell

        return datacell.prepare(self, options, awaiting=awaiting)

    def _store_out(self, run: Run, done: concurrent.futures.Future[TurnResult]) -> None:
        if run.out is not None and not done.cancelled() and done.exception() is None:
            self.user_ns[run.out] = done.result()

    def block(self, run: Run) -> TurnResult:
        """Wait in short slices, so an interrupt is seen at once and cancels the turn."""
        try:
            while not run.future.done():
                concurrent.futures.wait([run.future], WAIT_SLICE)
        except KeyboardInterrupt:
            run.handle.cancel()
            with contextlib.suppress(KeyboardInterrupt):
                concurrent.futures.wait([run.future], SETTLE_TIMEOUT)
            raise self.interrupted(run) from None
        return run.future.result()

    async def wait_async(self, run: Run) -> TurnResult:
        """Await on the kernel's loop; an interrupt arrives as CancelledError and cancels.

        The loop wakes every slice: a SIGINT's Python handler runs only when the main
        thread runs Python code, and nothing else may wake it while the reply streams."""
        done = asyncio.wrap_future(run.future)
        try:
            while not done.done():
                await asyncio.wait({done}, timeout=WAIT_SLICE)
        except asyncio.CancelledError:
            run.handle.cancel()
            await asyncio.wait({done}, timeout=SETTLE_TIMEOUT)
            raise self.interrupted(run) from None
        return done.result()

    def interrupted(self, run: Run) -> AgentError:
        """The short error an interrupted cell raises: the turn's own TurnCancelled."""
        result = run.handle.outcome()
        error = result.error if result is not None else None
        if not isinstance(error, TurnCancelled):
            error = TurnCancelled(
                f"the turn of {run.agent!r} was cancelled",
                partial_text=run.handle.partial_text,
                agent=run.agent,
            )
        kept = len(error.partial_text)
        return shorten(
            error,
            f"interrupted: the turn of {run.agent!r} was cancelled; its partial reply "
            f"({kept} characters) is kept in history, marked cancelled",
        )

    def conclude(self, run: Run, result: TurnResult) -> None:
        """Store --out, and raise the turn's error (not for a cancel the user asked for)."""
        if run.out is not None:
            self.user_ns[run.out] = result
        error = result.error
        if error is not None and not isinstance(error, TurnCancelled):
            raise shorten(error) from None

    @magic_arguments()
    @argument("command", nargs="?", default="help", choices=COMMANDS, help="What to do.")
    @argument("name", nargs="?", help="The agent (see each command).")
    @argument("--stored", action="store_true", help="list: the stored conversations.")
    @argument("--all", action="store_true", help="list --stored: of every notebook.")
    @argument("--take-over", action="store_true", help="resume: even from a live kernel.")
    @line_magic("agent")
    def agent_line(self, line: str) -> Any:
        """Manage agents: list, resume, usage, history, ledger, cancel, shutdown, reset,
        delete, wait, cache, config, runtime, tools, approve, deny, mcp, help.

            %agent list              the agents of this kernel (a DataFrame)
            %agent list --stored     the conversations this notebook can resume
                                     (--all: of every notebook)
            %agent resume NAME       continue NAME's stored conversation (--take-over:
                                     even if another kernel is writing it)
            %agent usage [NAME]      one row per turn (a DataFrame; default agent)
            %agent history [NAME]    one row per message (a DataFrame; default agent)
            %agent ledger            one row per API call of every agent (a DataFrame)
            %agent cancel [NAME]     stop NAME's turn (without NAME: every turn)
            %agent wait [NAME]       wait for a --background turn (without NAME: all)
            %agent reset [NAME]      clear the conversation the model sees
            %agent shutdown [NAME]   stop NAME (without NAME: the whole runtime)
            %agent delete NAME       stop NAME and erase its stored conversations
            %agent cache [clear]     the reply cache's size and hits (clear: empty it)
            %agent config            the effective settings
            %agent runtime           the kernel's AgentRuntime, for the Python API
            %agent tools [NAME]      NAME's tools and their declarations (a DataFrame)
            %agent approve [NAME]    approve the tool call waiting for an answer (deny:
            %agent deny [NAME]       refuse it); waits for one while NAME's turn runs
            %agent mcp list          the declared MCP servers (add NAME -- command
                                     args..., add NAME URL, remove NAME)
        """
        if is_data_command(line):
            from . import datacell

            return datacell.run_command(self, line)
        command = self.parse_command(line)
        handler = getattr(self, f"_cmd_{command.command}")
        try:
            return handler(command)
        except ConversationInUse as exc:
            raise UsageError(in_use_message(exc)) from None
        except UsageProblem as exc:
            raise UsageError(str(exc)) from None

    def parse_command(self, line: str) -> CommandLine:
        """The `%agent` line, checked: every problem is a UsageError."""
        args = parse_line(self.agent_line, line)
        if args.name is not None:
            try:
                check_agent_name(args.name)
            except UsageProblem as exc:
                raise UsageError(f"{args.name[:40]!r} is not an agent name ({exc})") from None
        flags = {"stored": args.stored, "everywhere": args.all, "take_over": args.take_over}
        for flag, (written, command) in _FLAGS.items():
            if flags[flag] and args.command != command:
                raise UsageError(
                    f"unrecognized arguments: {written} (it goes with %agent {command})"
                )
        return CommandLine(str(args.command), args.name, **flags)

    def parse_command_line(self, line: str) -> tuple[str, str | None]:
        """The `%agent` line as (command, NAME), checked (see `parse_command`)."""
        command = self.parse_command(line)
        return command.command, command.name

    def _named(self, name: str | None) -> Agent:
        """A live agent, or one this kernel used (NAME defaults to the default agent)."""
        return self.agents.named(name or self.default_agent)

    def _cmd_help(self, command: CommandLine) -> None:
        print(self.agent_line.__doc__)

    def _cmd_runtime(self, command: CommandLine) -> AgentRuntime:
        runtime = self.runtime
        print(
            f"agentrt: this notebook's conversations are in namespace {runtime.config.namespace!r}"
        )
        return runtime

    def _cmd_list(self, command: CommandLine) -> Any:
        """The agents as a frame: counts as nullable integers, `running_for` in seconds
        (NaN, shown blank, when idle), shown whole but without wrapping."""
        import pandas as pd

        if command.stored or command.everywhere:
            return self._stored_frame(everywhere=command.everywhere)
        infos = self.runtime.agents()
        frame = pd.DataFrame(
            {
                "name": pd.array([i.name for i in infos], dtype="string"),
                "model": pd.array([i.model for i in infos], dtype="string"),
                "state": pd.array([i.state for i in infos], dtype="string"),
                "turns": pd.array([i.turn_count for i in infos], dtype="Int64"),
                "queued": pd.array([i.queued for i in infos], dtype="Int64"),
                "running_for": pd.Series(
                    [
                        float("nan") if i.running_for is None else round(i.running_for, 1)
                        for i in infos
                    ],
                    dtype="float64",
                ),
                "total_tokens": pd.array(
                    [i.total_usage.total_tokens for i in infos], dtype="Int64"
                ),
            }
        )
        return _as_shown(frame)

    def _stored_frame(self, *, everywhere: bool) -> Any:
        """What `%agent resume` can bring back: one row per stored conversation, newest
        first (resume takes the newest of a name); `everywhere` adds other notebooks."""
        import pandas as pd

        runtime = self.runtime
        if runtime.store_problem is not None or runtime.config.store_path is None:
            print("agentrt: conversations are not stored in this kernel (see %agent config)")
        stored = [c for c in runtime.conversations(everywhere=everywhere) if c.messages]
        stored.sort(key=lambda c: c.last_activity, reverse=True)
        frame = pd.DataFrame(
            {
                "namespace": pd.array([c.namespace for c in stored], dtype="string"),
                "name": pd.array([c.name for c in stored], dtype="string"),
                "last_activity": pd.Series(
                    [_local_time(c.last_activity) for c in stored], dtype="datetime64[s]"
                ),
                "turns": pd.array([c.turns for c in stored], dtype="Int64"),
                "messages": pd.array([c.messages for c in stored], dtype="Int64"),
                "size": pd.array([_size(c.size) for c in stored], dtype="string"),
                "holder": pd.array([c.holder or "" for c in stored], dtype="string"),
                "id": pd.array([c.id for c in stored], dtype="string"),
            }
        )
        return _as_shown(frame if everywhere else frame.drop(columns="namespace"))

    def _cmd_resume(self, command: CommandLine) -> None:
        name = command.name
        if name is None:
            raise UsageError(
                "%agent resume needs the NAME of a stored conversation: "
                "%agent list --stored shows them"
            )
        runtime = self.runtime
        agent = self.agents.resume(name, cache=self.cache, take_over=command.take_over)
        if agent is None:
            print(f"{name}: already live in this kernel, its conversation is the cells' one")
            return
        history = runtime.history(agent)
        cut = (
            " (its last reply was cut off: incomplete)"
            if history and (history[-1].status == "incomplete")
            else ""
        )
        turns, messages = plural(runtime.turn_count(agent), "turn"), plural(len(history), "message")
        print(f"{name}: resumed, {turns}, {messages}{cut}")

    def _cmd_usage(self, command: CommandLine) -> Any:
        """One row per turn: the full typed frame, shown compactly (`frames.compact`)."""
        from ..frames import compact, usage_frame

        return compact(usage_frame(self._named(command.name)), "usage")

    def _cmd_history(self, command: CommandLine) -> Any:
        from ..frames import compact, history_frame

        return compact(history_frame(self._named(command.name)), "history")

    def _cmd_ledger(self, command: CommandLine) -> Any:
        from ..frames import compact, ledger_frame

        return compact(ledger_frame(self.runtime), "ledger")

    def _cmd_cancel(self, command: CommandLine) -> None:
        agents = self.agents
        names = [command.name] if command.name else agents.live_names()
        stopped = [n for n in names if agents.runtime.cancel(n)]
        if command.name is None:
            from . import datacell

            stopped += datacell.cancel_maps(agents.runtime)
        print(f"cancelled: {', '.join(stopped)}" if stopped else "no turn was running")

    def _cmd_wait(self, command: CommandLine) -> None:
        name = command.name
        if name is not None and name not in self.background:
            raise UsageError(f"no --background turn of {name!r} to wait for")
        runs = [self.background.pop(name)] if name else list(self.background.values())
        if name is None:
            self.background.clear()
        for run in runs:
            self.conclude(run, self.block(run))

    def _cmd_reset(self, command: CommandLine) -> None:
        agent = self._named(command.name)
        self.runtime.clear_history(agent)
        print(f"{agent.name}: conversation cleared")

    def _cmd_shutdown(self, command: CommandLine) -> None:
        name = command.name
        if name is None:
            self.shutdown_runtime()
            print("runtime shut down; the next %%agent cell starts a new one")
            return
        self.agents.shutdown(name)
        print(f"{name}: shut down (its stored conversation is kept)")

    def _cmd_delete(self, command: CommandLine) -> None:
        name = command.name
        if name is None:
            raise UsageError("%agent delete needs the NAME of the agent to erase")
        self.agents.delete(name)
        self.background.pop(name, None)
        print(f"{name}: deleted")

    def _cmd_cache(self, command: CommandLine) -> None:
        if command.name not in (None, "clear"):
            raise UsageError(
                "%agent cache shows the reply cache and %agent cache clear empties it; "
                f"it takes no agent name, got {command.name!r}"
            )
        runtime = self.runtime
        if command.name == "clear":
            runtime.cache_clear()
            print("reply cache cleared")
            return
        stats = runtime.cache_stats()
        state = "on" if self.cache else "off (%config AgentMagics.cache = True)"
        replies, hits = plural(stats["entries"], "reply", "replies"), plural(stats["hits"], "hit")
        print(f"reply cache: {replies}, {_size(stats['bytes'])}, {hits}; {state} for %%agent cells")

    def _cmd_config(self, command: CommandLine) -> None:
        config = self.runtime_config()
        env = os.environ.get(ENV_BACKEND)
        source = f"${ENV_BACKEND}" if env else "AgentMagics.backend"
        ipykernel = sys.modules.get("ipykernel")
        live = self.live_runtime
        problem = live.store_problem if live is not None else None
        store = str(config.store_path) if config.store_path else "none"
        if problem is not None:
            store += f" (not used: {problem})"
        elif config.store_path is None:
            store += " (conversations are not kept)"
        lines = [
            f"backend: {config.backend} (from {source}), resolved: {config.resolved_backend()}",
            f"default model: {config.model_for(None)}",
            f"notebook (namespace): {config.namespace}",
            f"store: {store}",
            f"reply cache for %%agent cells: {'on' if self.cache else 'off'}",
            f"default agent: {self.default_agent}",
            f"format: {self.default_format}, updates/s: {self.updates_per_second:g}, "
            f"live after: {self.live_after:g} s",
            f"await cells: {self.await_cells and bool(getattr(self.shell, 'autoawait', False))}",
            f"ipykernel: {getattr(ipykernel, '__version__', 'not running in a kernel')}",
        ]
        print("\n".join(lines))


def is_data_command(line: str) -> bool:
    """Whether a `%agent` line is one of `datacell`'s commands (known without importing it)."""
    words = line.split(maxsplit=1)
    return bool(words) and words[0] in DATA_COMMANDS


def is_seconds(value: float) -> bool:
    """Whether `value` is a usable timeout: finite, above 0, at most `LONGEST_SECONDS`."""
    return math.isfinite(value) and 0 < value <= LONGEST_SECONDS


def _data_options(args: Any) -> DataOptions | None:
    """The data flags of a parsed `%%agent` line, checked (None if it has none)."""
    if all(getattr(args, flag) is None for flag in DATA_FLAGS):
        return None
    from . import datacell

    return datacell.data_options(args)


def _maps(options: CellOptions) -> bool:
    return options.data_flags is not None and bool(options.data_flags.map)


def _connection_file() -> str | None:
    """The kernel's connection file, if this runs in an ipykernel (not imported otherwise)."""
    connect = sys.modules.get("ipykernel.connect")
    if connect is None:
        return None
    try:
        return str(connect.get_connection_file())
    except Exception:  # not in a running kernel, or the file is gone
        return None


@contextlib.contextmanager
def _store_warning_left_to_us() -> Iterator[None]:
    """While a runtime starts, drop its log line about a store fault: the magics say it
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


def answered_by(config: RuntimeConfig) -> str | None:
    """Who answers the cells when it is not Google's Gemini, for the footer beside the
    model name: the engine of the local server, or the host (and port) of a base_url,
    never its user or password."""
    backend = config.resolved_backend()
    if backend != "gemini":
        return backend
    if config.base_url is None:
        return None
    url = urlsplit(config.base_url)
    host = url.hostname or "a base_url"
    return f"{host}:{url.port}" if url.port else host


def _note_missing(names: list[str]) -> None:
    """One line when `{name}` braces went out as written: usually a typo, costing a call."""
    if not names:
        return
    braces = ", ".join(f"{{{name}}}" for name in names)
    were, variables = ("was", "variable") if len(names) == 1 else ("were", "variables")
    print(
        f"agentrt: {braces} {were} sent as written: no {variables} {', '.join(names)} "
        "defined (write {{ and }} to send braces without this note)"
    )


def _as_shown(frame: Any) -> Any:
    """`frame` itself, displayed whole but compactly (blank for missing values, no wrapping)."""
    from ..frames import CompactFrame

    shown = CompactFrame(frame)
    shown.compact_columns = tuple(frame.columns)
    return shown


def _local_time(moment: datetime) -> datetime:
    """A UTC time as the wall clock here shows it, to the second."""
    return moment.astimezone().replace(tzinfo=None, microsecond=0)


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"
