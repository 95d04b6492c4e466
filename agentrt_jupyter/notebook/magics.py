"""`%%agent` (chat with an agent in a cell) and `%agent` (list, usage, cancel, …).

The magics parse a line (`cellline`), call the kernel's session (`session`, its agents
in `agents`), the `%agent` commands (`commands`) or the data cells (`datacell`), and hand
the result to a view: a `%%agent` turn to a `TurnView` (`cellrun`), a listing to a frame
(`listing`, `frames`). Their settings are traitlets (`%config AgentMagics`).

By default the extension rewrites a `%%agent` cell into a top-level `await` of `acell`,
so the kernel's loop keeps handling widget clicks and interrupts while the reply streams,
and Run All / nbclient wait for it. Called any other way (`%autoawait off`,
`run_cell_magic`), the cell waits in short slices instead.

The data flags (`--tools`, `--schema`, `--map`, …) and their `%agent` commands are
`datacell`'s, imported by the first cell or command that uses them: a plain cell, the
first one of a notebook above all, does not pay for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from IPython.core import magic
from IPython.core import magic_arguments as margs
from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class, no_var_expand
from traitlets import Bool, Enum, Float, TraitError, Unicode, observe, validate

from ..config import BACKENDS, RuntimeConfig, default_store_path, runtime_config
from ..errors import ConversationInUse, InvalidConfig, UsageProblem
from ..handle import ChatHandle
from ..runtime import Agent, AgentRuntime
from . import cellrun
from .agents import NotebookAgents, connection_file, in_use_message, notebook_namespace
from .cellline import (
    CLASSIFY_HELP,
    CONFIRM_HELP,
    EVERY_TOOL,
    FILTER_HELP,
    LABELS_HELP,
    MAP_HELP,
    SCHEMA_HELP,
    TOOLS_HELP,
    CellOptions,
    CommandLine,
    cell_options,
    command_line,
    is_data_command,
    is_seconds,
    mentions_frame_operator,
    parse_line,
)
from .cellline import DATA_FLAGS as DATA_FLAGS
from .commands import ENV_BACKEND, AgentCommands
from .costgate import DEFAULT_CONFIRM_COST
from .display import FORMATS, OPEN_DELAY, OnceHint, StartingNote, TurnView, answered_by
from .interpolate import interpolate as expand
from .interpolate import note_missing
from .session import KernelSession, Run

if TYPE_CHECKING:
    from .datacell import CellData

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
_RUNTIME_SETTINGS = ("backend", "default_model", "store_path", "store_url", "base_url")
APPROVAL_TIMEOUT = 120.0
"""The default of `AgentMagics.approval_timeout` (`approval.APPROVAL_TIMEOUT`)."""
_DATACELL = f"{__package__}.datacell"
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
        None,
        allow_none=True,
        help="Model of new agents (default: the backend's): a Gemini name, or provider:name "
        "like 'openai:gpt-4.1-mini', 'anthropic:claude-sonnet-4-5' or 'ollama:qwen3:4b'.",
    ).tag(config=True)
    store_path = Unicode(
        None,
        allow_none=True,
        help="SQLite file keeping conversations, for %agent resume and the reply cache "
        "(default: $AGENTRT_HOME/conversations.sqlite3, else "
        "~/.local/share/agentrt-jupyter/conversations.sqlite3; empty string: keep nothing).",
    ).tag(config=True)
    store_url = Unicode(
        None,
        allow_none=True,
        help="PostgreSQL store for a team (postgresql://user:password@host/db), used instead "
        "of store_path (default: $AGENTRT_STORE_URL; empty string: none).",
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
    confirm_cost = Float(
        DEFAULT_CONFIRM_COST,
        allow_none=True,
        help="US dollars: a map or operator whose estimated cost passes this asks for "
        "Approve / Cancel in the cell before it sends anything (None: never ask).",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self.session = KernelSession.of(shell)
        """The kernel's session: its runtime, agents, tool sources and lab comm."""
        self.await_hint = OnceHint(AWAIT_HINT)
        self.transform: Callable[[list[str]], list[str]] | None = None
        """The input transformer the extension added for these magics (see `extension`)."""
        self._rewarm = False
        super().__init__(shell, **kwargs)
        self.session.runtime_config = self.runtime_config

    @property
    def user_ns(self) -> dict[str, Any]:
        return self.session.user_ns

    def namespace(self) -> str:
        """This notebook's name for its conversations (see `notebook_namespace`)."""
        return notebook_namespace(os.environ, self.user_ns, connection_file())

    @validate("updates_per_second")
    def _check_rate(self, proposal: Any) -> float:
        rate = float(proposal["value"])
        if not 0 < rate <= 20:
            raise TraitError(f"updates_per_second must be in (0, 20], got {rate}")
        return rate

    @validate("confirm_cost")
    def _check_confirm_cost(self, proposal: Any) -> float | None:
        value = proposal["value"]
        if value is not None and not 0 <= float(value) < float("inf"):
            raise TraitError(f"confirm_cost must be a number of US dollars >= 0, got {value}")
        return value if value is None else float(value)

    @validate("live_after")
    def _check_live_after(self, proposal: Any) -> float:
        delay = float(proposal["value"])
        if not 0 <= delay <= 60:
            raise TraitError(f"live_after must be in [0, 60] seconds, got {delay}")
        return delay

    @observe(*_RUNTIME_SETTINGS)
    def _runtime_setting_changed(self, change: Any) -> None:
        """A new backend or store needs a new runtime; agents come back from the store."""
        if self.session.runtime is not None:
            self.session.shutdown_runtime()
            self._rewarm = True

    def rewarm_after_cell(self, _result: Any = None) -> None:
        """IPython's post_run_cell: a cell that changed runtime settings (often several
        `%config` lines) shut the warmed-up runtime down; start the new one and its
        warm-up now, once, so the next `%%agent` cell does not pay for it."""
        rewarm, self._rewarm = self._rewarm, False
        if not rewarm or self.session.runtime is not None:
            return
        try:
            self.session.start_warm_up()
        except UsageError:  # a bad setting: the next %%agent cell reports it
            return

    def runtime_config(self) -> RuntimeConfig:
        """The settings of the next runtime; a bad one is a UsageError saying where."""
        backend = os.environ.get(ENV_BACKEND) or self.backend
        try:
            if self.store_path is None:
                store: Path | None = default_store_path()
            else:
                store = Path(self.store_path).expanduser() if self.store_path else None
            settings: dict[str, Any] = {
                "backend": backend,
                "default_model": self.default_model or None,
                "base_url": self.base_url or None,
                "store_path": store,
                "namespace": self.namespace(),
            }
            if self.store_url is not None:
                settings["store_url"] = self.store_url or None
            return runtime_config(settings)
        except UsageProblem as exc:
            field = exc.field if isinstance(exc, InvalidConfig) else None
            source = self._setting_source(field)
            raise UsageError(f"{exc} (from {source})" if source else str(exc)) from None
        except RuntimeError as exc:  # expanduser: no home directory for ~user
            raise UsageError(f"store_path: {exc} (from AgentMagics.store_path)") from None

    def _setting_source(self, field: str | None) -> str | None:
        """Where the runtime setting `field` came from, for its error message (a missing
        or bad API key: where the backend that needs it came from)."""
        backend = f"${ENV_BACKEND}" if os.environ.get(ENV_BACKEND) else "AgentMagics.backend"
        if field == "backend":
            return backend
        if field == "api_key":
            return f"the backend, from {backend}"
        if field == "store_path" and self.store_path is None:
            return "$AGENTRT_HOME"
        return f"AgentMagics.{field}" if field in _RUNTIME_SETTINGS else None

    @property
    def runtime(self) -> AgentRuntime:
        """The kernel's running runtime (a UsageError if none runs; nothing is started:
        that is `session.ensure_runtime()`)."""
        runtime = self.session.runtime
        if runtime is None:
            raise UsageError("no agentrt runtime is running: a %%agent cell starts one")
        return runtime

    @magic_arguments("%agent")  # help's usage line then reads "%%agent [...]"
    @argument(
        "name",
        nargs="?",
        help="The agent (created on first use in this kernel; a restarted kernel starts "
        "it fresh, see --resume). Default: AgentMagics.default_agent.",
    )
    @argument(
        "--model",
        help="Model of the agent, a bare Gemini name or provider:name (openai:, anthropic:, "
        "vertex:, ollama:); applies from this turn on.",
    )
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
    @argument("--filter", metavar="DF", help=FILTER_HELP)
    @argument("--classify", metavar="DF", help=CLASSIFY_HELP)
    @argument("--labels", metavar="LABELS", help=LABELS_HELP)
    @no_var_expand
    @cell_magic("agent")
    def agent_cell(self, line: str, cell: str) -> None:
        """Send the cell to an agent and stream its reply here.

        `{expr}` in the cell is replaced by its value in the user namespace (`{{x}}` is a
        literal `{x}`). Interrupt or the Cancel button stop the turn; the partial reply
        is kept in history, marked cancelled. Errors stop Run All.
        """
        if mentions_frame_operator(line) and (options := self.parse_cell_line(line)).maps:
            from . import datacell

            datacell.bmap(self.session, options, cell)
            return
        run = self.start(line, cell)
        if run is not None:
            cellrun.conclude(run, cellrun.block(run), self.user_ns)

    async def acell(self, line: str, cell: str) -> None:
        """`%%agent` as an awaiting cell: the kernel handles clicks while the reply streams."""
        if mentions_frame_operator(line) and (options := self.parse_cell_line(line)).maps:
            from . import datacell

            await datacell.amap(self.session, options, cell)
            return
        run = self.start(line, cell, awaiting=True)
        if run is not None:
            cellrun.conclude(run, await cellrun.wait_async(run), self.user_ns)

    def parse_cell_line(self, line: str) -> CellOptions:
        """The `%%agent` line, checked before anything runs: every problem is a UsageError."""
        args = parse_line(self.agent_cell, line)
        return cell_options(args, default_agent=self.default_agent, interpolate=self.interpolate)

    def start(self, line: str, cell: str, *, awaiting: bool = False) -> Run | None:
        """Parse, create or resume the agent, show the displays and start the turn.

        Returns the run to wait for, or None for a background run."""
        options = self.parse_cell_line(line)
        if not cell.strip():
            raise UsageError("the cell is empty: write the prompt below the %%agent line")
        text, settings = self._expanded(options, cell.strip("\n").rstrip())
        agents = self.session.ensure_agents()
        starting = StartingNote(self.shell)
        starting.show_if_slow(self.session.warm_up, self.live_after)
        try:
            data = self._cell_data(options, awaiting=awaiting)
            if data is not None:
                settings.update(data.settings)
            agent, handle = self._chat(agents, options, settings, text)
        except BaseException:
            starting.withdraw()
            raise
        view = TurnView(
            self.shell,
            fmt=options.fmt or (data.fmt if data is not None else None) or self.default_format,
            rate=self.updates_per_second,
            show_thoughts=self.show_thoughts,
            background=options.background,
            answered_by=answered_by(agents.runtime.config),
            hint=None if options.background else self.await_hint,
            open_delay=self.live_after,
            starting=starting,
        )
        return cellrun.start_run(
            self.session,
            agents.runtime,
            handle,
            view,
            data,
            agent=agent.name,
            out=options.out,
            background=options.background,
        )

    def _chat(
        self, agents: NotebookAgents, options: CellOptions, settings: dict[str, Any], text: str
    ) -> tuple[Agent, ChatHandle]:
        """Start the cell's turn on its agent (created, resumed or reconfigured first)."""
        try:
            return agents.chat(
                options.name,
                settings,
                text,
                cache=self.cache,
                new=options.new,
                resume=options.resume,
                refresh=options.refresh,
            )
        except ConversationInUse as exc:
            raise UsageError(in_use_message(exc)) from None
        except UsageProblem as exc:
            raise UsageError(str(exc)) from None

    def _expanded(self, options: CellOptions, text: str) -> tuple[str, dict[str, Any]]:
        """The cell's text and settings with `{expr}` replaced (unless turned off)."""
        settings = dict(options.settings)
        if not options.interpolate:
            return text, settings
        missing: list[str] = []
        text = expand(text, self.user_ns, missing)
        if settings.get("system_instruction"):
            settings["system_instruction"] = expand(
                settings["system_instruction"], self.user_ns, missing
            )
        note_missing(missing)
        return text, settings

    def _cell_data(self, options: CellOptions, *, awaiting: bool) -> CellData | None:
        """The cell's data flags resolved (`datacell.prepare`), or None for a plain cell
        while no cell of this kernel used them: then no agent has tools, an approver or a
        schema from the cells, and there is nothing to resolve. An approval_timeout out of
        range still goes to `prepare`, which says so."""
        valid = is_seconds(float(self.approval_timeout))
        if options.data_flags is None and _DATACELL not in sys.modules and valid:
            return None
        from . import datacell

        return datacell.prepare(
            self.session, options, approval_timeout=self.approval_timeout, awaiting=awaiting
        )

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

            return datacell.run_command(
                self.session,
                line,
                default_agent=self.default_agent,
                approval_timeout=self.approval_timeout,
            )
        command = self.parse_command(line)
        commands = AgentCommands(self.session, self, self.agent_line.__doc__ or "")
        try:
            return commands.run(command)
        except ConversationInUse as exc:
            raise UsageError(in_use_message(exc)) from None
        except UsageProblem as exc:
            raise UsageError(str(exc)) from None

    def parse_command(self, line: str) -> CommandLine:
        """The `%agent` line, checked: every problem is a UsageError."""
        return command_line(parse_line(self.agent_line, line))

    def parse_command_line(self, line: str) -> tuple[str, str | None]:
        """The `%agent` line as (command, NAME), checked (see `parse_command`)."""
        command = self.parse_command(line)
        return command.command, command.name
