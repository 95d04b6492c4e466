"""The `%%agent` and `%agent` lines, parsed and checked: every mistake is a UsageError
before anything runs. Pure: the magics parse with these, then call the session and the
data cells (`datacell`), which read the results.
"""

from __future__ import annotations

import keyword
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from ..config import agent_config, check_agent_name
from ..errors import UsageProblem

DATA_FLAGS = (
    "tools", "confirm", "schema", "out_frame", "map", "filter", "classify", "labels",
    "tool_timeout",
)  # fmt: skip
"""The `%%agent` options `datacell` resolves (`DataOptions` fields)."""
DATA_COMMANDS = ("tools", "approve", "deny", "mcp")
"""The `%agent` commands `datacell` runs."""
EVERY_TOOL = "*"
"""`--confirm` without a value."""
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
FILTER_HELP = (
    "Keep the rows of DataFrame DF for which the model judges the cell, a template with "
    "{column} placeholders, true (--out RESULT: the rows kept)."
)
CLASSIFY_HELP = (
    "Put each row of DataFrame DF in one of --labels by the model, the cell a template "
    "with {column} placeholders (--out RESULT: the categorical Series)."
)
LABELS_HELP = "With --classify: the labels, a,b,c."
FRAME_OPERATORS = ("map", "filter", "classify")
"""The `%%agent` flags that run the cell over a DataFrame on the batch engine."""
IPYTHON_NAMES = {
    "In": "IPython's input history",
    "Out": "IPython's output history",
    "_": "IPython's last output",
    "__": "IPython's output before last",
    "___": "IPython's third-last output",
    "_i": "IPython's last input",
    "_ii": "IPython's input before last",
    "_iii": "IPython's third-last input",
    "_oh": "IPython's output history",
    "_ih": "IPython's input history",
    "_dh": "IPython's directory history",
    "get_ipython": "IPython's way to reach the shell",
    "exit": "IPython's exit command",
    "quit": "IPython's exit command",
}
"""Names the kernel lives on: a cell that stored a TurnResult there would break it."""
_HISTORY_ENTRY = re.compile(r"_i?\d+")
"""`_5` (output 5), `_i5` (input 5): IPython sets these after every cell."""
_FLAGS = {
    "stored": ("--stored", "list"),
    "everywhere": ("--all", "list"),
    "take_over": ("--take-over", "resume"),
}
"""`%agent` options that belong to one command: (how it is written, the command)."""


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


def is_variable(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def check_variable(flag: str, name: str) -> None:
    """A variable a cell may store into (`--out`, `--out-frame`), or a UsageError saying why
    not: not an identifier, a keyword, a name IPython keeps its state in, or a dunder."""
    if not is_variable(name):
        raise UsageError(f"{flag} needs a variable name, got {name!r}")
    if name in IPYTHON_NAMES:
        reason = f"{name} is {IPYTHON_NAMES[name]}"
    elif _HISTORY_ENTRY.fullmatch(name):
        reason = f"IPython sets {name} to an entry of its history after every cell"
    elif name.startswith("__") and name.endswith("__"):
        reason = f"{name} is a name Python itself uses (__builtins__, __name__, …)"
    else:
        return
    raise UsageError(f"{flag} {name}: {reason}; store the result in another variable")


def is_seconds(value: float) -> bool:
    """Whether `value` is a usable timeout: finite, above 0, at most `LONGEST_SECONDS`."""
    return math.isfinite(value) and 0 < value <= LONGEST_SECONDS


def check_seconds(what: str, value: float) -> float:
    """`value` if it is a usable timeout (`is_seconds`), else a UsageError naming `what`."""
    if not is_seconds(value):
        raise UsageError(
            f"{what} is in seconds: more than 0 and at most {LONGEST_SECONDS}, got {value:g}"
        )
    return value


def is_data_command(line: str) -> bool:
    """Whether a `%agent` line is one of `datacell`'s commands (known without importing it)."""
    words = line.split(maxsplit=1)
    return bool(words) and words[0] in DATA_COMMANDS


@dataclass(frozen=True)
class DataOptions:
    """The data flags of a `%%agent` line, as written (checked by `data_options`)."""

    tools: str | None = None
    confirm: str | None = None
    schema: str | None = None
    out_frame: str | None = None
    map: str | None = None
    filter: str | None = None
    classify: str | None = None
    labels: str | None = None
    tool_timeout: float | None = None

    @property
    def frame_operator(self) -> tuple[str, str] | None:
        """(operator, DF) of a `--map DF` / `--filter DF` / `--classify DF` cell, else None."""
        for name in FRAME_OPERATORS:
            frame = getattr(self, name)
            if frame:
                return name, frame
        return None

    @property
    def label_list(self) -> list[str]:
        """`--labels a,b,c` as a list."""
        return [label.strip() for label in (self.labels or "").split(",")]


NO_DATA = DataOptions()


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
        """The data flags, all unset if the line has none."""
        return self.data_flags or NO_DATA

    @property
    def maps(self) -> bool:
        """A `--map DF` (`--filter DF`, `--classify DF`) cell: run by the batch engine, not
        as one turn."""
        return self.data_flags is not None and self.data_flags.frame_operator is not None


@dataclass(frozen=True)
class CommandLine:
    """A `%agent` line, parsed and checked."""

    command: str
    name: str | None
    stored: bool = False
    everywhere: bool = False
    take_over: bool = False


def cell_options(args: Any, *, default_agent: str, interpolate: bool) -> CellOptions:
    """The parsed `%%agent` line, checked (`interpolate`: the magics' setting)."""
    if args.out is not None:
        check_variable("--out", args.out)
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
    name = args.name or default_agent
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
        interpolate=interpolate and not args.no_interpolate,
        data_flags=_data_flags(args),
    )


def _data_flags(args: Any) -> DataOptions | None:
    """The data flags of a parsed `%%agent` line, checked (None if it has none)."""
    if all(getattr(args, flag) is None for flag in DATA_FLAGS):
        return None
    return data_options(args)


def check_name(name: str) -> None:
    """An agent NAME given to a `%agent` command, or a UsageError (the name shown escaped,
    as repr shows it: a control character is never printed raw)."""
    try:
        check_agent_name(name)
    except UsageProblem as exc:
        raise UsageError(f"{name[:40]!r} is not an agent name ({exc})") from None


def command_line(args: Any) -> CommandLine:
    """The parsed `%agent` line, checked."""
    if args.name is not None:
        check_name(args.name)
    flags = {"stored": args.stored, "everywhere": args.all, "take_over": args.take_over}
    for flag, (written, command) in _FLAGS.items():
        if flags[flag] and args.command != command:
            raise UsageError(f"unrecognized arguments: {written} (it goes with %agent {command})")
    return CommandLine(str(args.command), args.name, **flags)


def data_options(args: Any) -> DataOptions:
    """The data flags of a parsed `%%agent` line; a mistake is a UsageError."""
    options = DataOptions(
        tools=args.tools,
        confirm=args.confirm,
        schema=args.schema,
        out_frame=args.out_frame,
        map=args.map,
        filter=args.filter,
        classify=args.classify,
        labels=args.labels,
        tool_timeout=args.tool_timeout,
    )
    if options.out_frame is not None:
        check_variable("--out-frame", options.out_frame)
    if options.out_frame is not None and options.schema is None:
        raise UsageError("--out-frame holds the rows of a --schema reply: give --schema too")
    if options.tool_timeout is not None:
        check_seconds("--tool-timeout", options.tool_timeout)
    _check_frame_operator(args, options)
    return options


def mentions_frame_operator(line: str) -> bool:
    """Whether a `%%agent` line may run over a DataFrame (cheap, before parsing it)."""
    return any(f"--{name}" in line for name in FRAME_OPERATORS)


def _check_frame_operator(args: Any, options: DataOptions) -> None:
    given = [f"--{name}" for name in FRAME_OPERATORS if getattr(options, name) is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)}: a cell runs one of them")
    if options.labels is not None and options.classify is None:
        raise UsageError("--labels go with --classify DF")
    if options.classify is not None and (options.labels is None or not all(options.label_list)):
        raise UsageError("--classify DF needs its labels: --labels a,b,c")
    if given:
        _check_map(args, options, given[0])


def _check_map(args: Any, options: DataOptions, operator: str) -> None:
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
                f"{operator} runs a fresh agent on every row, unattended: leave out {flag}"
            )
