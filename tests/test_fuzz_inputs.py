"""Fuzzing every input surface: only the library's typed errors (or success), never another.

Configs, content, tools and magic argument lines get random values; each call must
succeed or raise an `AgentError` (a `UsageError` in the magics), and never hang. Parse
level only: no model turn runs, so the whole file stays fast.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

import agentrt_jupyter as art
from agentrt_jupyter import AgentConfig, InvalidConfig, InvalidContent, RuntimeConfig
from agentrt_jupyter.config import agent_config, runtime_config
from agentrt_jupyter.content import part_from_json, part_to_json, to_parts
from agentrt_jupyter.notebook.commands import AgentCommands
from agentrt_jupyter.notebook.magics import AgentMagics
from agentrt_jupyter.tools import as_tool

bounded = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MARKER = "K3yM4rk3rZ"
"""Every fuzzed API key contains this: it must never show in an error or a repr."""


class Weird:
    """An object with nothing any input takes."""

    def __repr__(self) -> str:
        return "Weird()"


class Exploding:
    """Every comparison and conversion raises: validation must not touch them first."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")

    __hash__ = object.__hash__

    def __str__(self) -> str:
        raise RuntimeError("converted")

    def __repr__(self) -> str:
        return "Exploding()"


def tool_fn(city: str, days: int = 1) -> str:
    """A valid tool."""
    return city * days


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


class NoMembers(enum.Enum):
    pass


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.complex_numbers(max_magnitude=10),
    st.builds(Weird),
    st.builds(Exploding),
    st.sampled_from([int, str, dict, tool_fn, len, print, Path("x.png"), Colour.RED]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
    ),
    max_leaves=8,
)
api_keys = st.builds(
    lambda before, after: before + MARKER + after, st.text(max_size=6), st.text(max_size=6)
)
AGENT_FIELDS = [f.name for f in dataclasses.fields(AgentConfig)]
RUNTIME_FIELDS = [f.name for f in dataclasses.fields(RuntimeConfig)]
field_values = st.one_of(
    values,
    st.sampled_from(["gemini-2.5-flash", "models/x-1", "a..b", "http://127.0.0.1:1", "v1beta"]),
    st.sampled_from(["auto", "scripted", "local", "gemini"]),
    st.lists(st.text(max_size=5), max_size=6),
    st.lists(st.sampled_from([tool_fn, len, int, Weird()]), max_size=3),
)


def config_dicts(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Real field names (with values of any type) mixed with made-up names; an api_key,
    when there is one, carries MARKER."""
    key = st.one_of(st.sampled_from(names), st.text(max_size=12))
    fields = st.dictionaries(key, field_values, max_size=5) | st.dictionaries(
        st.sampled_from(names), field_values, max_size=4
    )
    with_key = st.builds(lambda found, api_key: {**found, "api_key": api_key}, fields, api_keys)
    return fields | with_key


def assert_key_hidden(text: str) -> None:
    assert MARKER not in text, text


@bounded
@given(config_dicts(AGENT_FIELDS))
def test_random_agent_configs_are_built_or_invalid_config(fields: dict[str, Any]) -> None:
    for build in (
        lambda: agent_config(None, fields),
        lambda: agent_config(AgentConfig(), fields),
        lambda: AgentConfig().with_changes(**fields),
    ):
        try:
            config = build()
        except InvalidConfig as exc:
            assert isinstance(exc.field, str)  # noqa: PT017
            assert_key_hidden(f"{exc} {exc!r}")
            continue
        assert_key_hidden(repr(config))
        assert all(isinstance(tool, art.Tool) for tool in config.tools)
        json.dumps([tool.declaration() for tool in config.tool_list], allow_nan=False)


@bounded
@given(config_dicts(RUNTIME_FIELDS))
def test_random_runtime_configs_are_built_or_invalid_config(fields: dict[str, Any]) -> None:
    try:
        config = runtime_config(fields)
    except InvalidConfig as exc:
        assert isinstance(exc.field, str)  # noqa: PT017
        assert_key_hidden(f"{exc} {exc!r}")
        return
    assert_key_hidden(repr(config))
    assert config.resolved_backend() in {"gemini", "local", "scripted"}


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A regular file, a folder, a FIFO, a dangling symlink, a symlink loop, devices."""
    root = tmp_path_factory.mktemp("odd")
    (root / "note.txt").write_text("hello")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "blob.unknownext").write_bytes(b"?")
    (root / "folder.txt").mkdir()
    os.mkfifo(root / "pipe.txt")
    (root / "dangling.txt").symlink_to(root / "nowhere.txt")
    (root / "loop.txt").symlink_to(root / "loop.txt")
    return [
        root / "note.txt",
        root / "image.png",
        root / "blob.unknownext",
        root / "folder.txt",
        root / "pipe.txt",
        root / "dangling.txt",
        root / "loop.txt",
        root / "note.txt" / "inner.txt",
        root / ("long" * 80 + ".txt"),
        Path("/dev/zero"),
        Path("/dev/null"),
        Path("/proc/self/mem"),
        Path("nul\0.txt"),
        root,
    ]


class FakePilImage:
    """Quacks like a PIL image: to_parts saves it as PNG."""

    __module__ = "PIL.Image"

    def save(self, buffer: Any, format: str) -> None:
        buffer.write(b"\x89PNG fake")


def content_values(paths: list[Path]) -> st.SearchStrategy[Any]:
    path = st.one_of(
        st.sampled_from(paths),
        st.builds(lambda base, name: base.parent / name, st.sampled_from(paths), st.text()),
    )
    parts = st.one_of(
        st.builds(art.TextPart, values, values),
        st.builds(art.BlobPart, st.one_of(st.text(max_size=12), values), values),
        st.builds(art.FunctionCallPart, values, values),
        st.builds(art.FunctionResponsePart, values, values),
        st.builds(art.TextPart, st.text(min_size=1)),
    )
    leaf = st.one_of(values, path, parts, st.builds(FakePilImage), st.text(min_size=1))
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=10)


def test_random_content_is_parts_or_invalid_content(odd_files: list[Path]) -> None:
    @bounded
    @given(content_values(odd_files))
    def check(content: Any) -> None:
        try:
            parts = to_parts(content)
        except InvalidContent as exc:
            assert str(exc)  # noqa: PT017
            return
        assert parts
        for part in parts:
            stored = json.loads(json.dumps(part_to_json(part), allow_nan=False))
            if isinstance(part, art.TextPart | art.BlobPart):
                assert part_from_json(stored) == part

    check()


ANNOTATIONS: list[Any] = [
    int,
    str,
    float,
    bool,
    list,
    dict,
    tuple,
    set,
    list[int],
    dict[str, int],
    tuple[int, ...],
    tuple[()],
    frozenset[str],
    int | None,
    typing.Optional[str],  # noqa: UP045 - the old spelling must work too
    typing.Union[int, str, None],  # noqa: UP007
    list[list[list[int]]],
    typing.Any,
    Colour,
    NoMembers,
    complex,
    bytes,
    None,
    type(None),
    typing.Callable[[int], int],
    "int",
    "NotDefined",
    "1 +",
    "list[int]",
    [int],
    {"a": int},
    3,
    Weird(),
    Exploding(),
    typing.TypeVar("T"),
    typing.Annotated[int, "meta"],
    typing.Literal["a"],
]
literal_values = st.lists(
    st.one_of(st.text(max_size=4), st.integers(), st.floats(), st.booleans(), st.none()),
    min_size=1,
    max_size=3,
)
annotations = st.one_of(
    st.sampled_from(ANNOTATIONS),
    literal_values.map(lambda options: typing.Literal[tuple(options)]),
)
KINDS = ("positional_only", "normal", "keyword_only", "var_positional", "var_keyword")
parameters = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.one_of(st.none(), annotations),
        st.booleans(),  # has a default
    ),
    max_size=4,
)
function_names = st.one_of(
    st.sampled_from(["lookup", "_private", "with.dot", "1bad", "", "a" * 70, "λ", "ok-name"]),
    st.text(max_size=10),
)


def build_function(
    name: str, params: list[tuple[str, Any, bool]], doc: str | None
) -> Callable[..., Any]:
    """A function with these parameters (annotations set directly, defaults where legal)."""
    sections: dict[str, list[str]] = {kind: [] for kind in KINDS}
    hints: dict[str, Any] = {}
    seen_default = False
    in_order = sorted(params, key=lambda param: KINDS.index(param[0]))
    for index, (kind, hint, has_default) in enumerate(in_order):
        param = f"p{index}"
        if kind in ("var_positional", "var_keyword"):
            if sections[kind]:
                continue
            sections[kind].append(("*" if kind == "var_positional" else "**") + param)
        else:
            default = has_default or (seen_default and kind != "keyword_only")
            seen_default = seen_default or (default and kind != "keyword_only")
            sections[kind].append(f"{param}=None" if default else param)
        if hint is not None:
            hints[param] = hint
    signature = [
        *sections["positional_only"],
        *(["/"] if sections["positional_only"] else []),
        *sections["normal"],
        *sections["var_positional"],
        *(["*"] if sections["keyword_only"] and not sections["var_positional"] else []),
        *sections["keyword_only"],
        *sections["var_keyword"],
    ]
    namespace: dict[str, Any] = {}
    exec(f"def generated({', '.join(signature)}):\n    return None\n", namespace)
    fn = namespace["generated"]
    fn.__annotations__ = hints
    fn.__name__ = name
    fn.__doc__ = doc
    return typing.cast("Callable[..., Any]", fn)


class CallableObject:
    def __call__(self, x: int) -> int:
        return x


class Dataclassy:
    def __init__(self, word: str) -> None:
        self.word = word


tools = st.one_of(
    st.builds(build_function, function_names, parameters, st.one_of(st.none(), st.text())),
    st.sampled_from(
        [
            len,
            print,
            int,
            sorted,
            max,
            Weird(),
            CallableObject(),
            functools.partial(tool_fn, "x"),
            lambda x: x,
            Dataclassy,
            tool_fn,
            Colour,
            Exploding(),
            "tool_fn",
        ]
    ),
)


@bounded
@given(st.lists(tools, max_size=3))
def test_random_tools_are_declared_or_invalid_config(candidates: list[Any]) -> None:
    for candidate in candidates:
        try:
            tool = as_tool(candidate)
        except InvalidConfig as exc:
            assert exc.field == "tools"  # noqa: PT017
            continue
        json.dumps(tool.declaration(), allow_nan=False)
    try:
        AgentConfig(tools=candidates)
    except InvalidConfig as exc:
        assert exc.field == "tools"  # noqa: PT017


@pytest.fixture(scope="module")
def magics() -> AgentMagics:
    return AgentMagics(shell=None)


TOKENS = [
    "--model",
    "--system",
    "--temperature",
    "--max-tokens",
    "--new",
    "--out",
    "--format",
    "--background",
    "--no-interpolate",
    "--bogus",
    "--n",
    "--",
    "-",
    "-h",
    "'",
    '"',
    "\\",
    "'two words'",
    '"say \\"hi\\""',
    "x",
    "res",
    "class",
    "1.5",
    "nan",
    "inf",
    "-3",
    "1e999",
    "markdown",
    "yaml",
    "gemini-2.5-flash",
    "a..b",
    "ünïcødé",
    "名前",
    "tab\there",
    "nul\0",
    "list",
    "usage",
    "delete",
    "frobnicate",
    "=",
    "--temperature=0.5",
    "--out=",
]
lines = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=6).map(" ".join),
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=5).map(" ".join),
)


@bounded
@given(lines)
def test_random_agent_cell_lines_parse_or_are_usage_errors(magics: AgentMagics, line: str) -> None:
    try:
        options = magics.parse_cell_line(line)
    except UsageError as exc:
        assert str(exc)  # noqa: PT017
        return
    agent_config(None, {**options.settings, "name": options.name})


@bounded
@given(lines)
def test_random_agent_line_commands_parse_or_are_usage_errors(
    magics: AgentMagics, line: str
) -> None:
    try:
        command, name = magics.parse_command_line(line)
    except UsageError as exc:
        assert str(exc)  # noqa: PT017
        return
    assert command in AgentCommands(magics.session, magics, "").handlers
    assert name is None or isinstance(name, str)
