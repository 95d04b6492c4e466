"""Bad input is the library's typed error naming what was wrong, never another exception."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp

import agentrt_jupyter as art
from agentrt_jupyter import AgentConfig, AgentRuntime, InvalidConfig, InvalidContent, RuntimeConfig
from agentrt_jupyter.config import agent_config, runtime_config
from agentrt_jupyter.content import to_parts
from agentrt_jupyter.notebook.extension import loaded_magics
from agentrt_jupyter.tools import as_tool


def global_shell() -> Any:
    """IPython's test shell: started by the first caller, the same one for every later one."""
    ipapp: Any = globalipapp
    ipapp.start_ipython()
    return ipapp.get_ipython()


def test_an_unknown_setting_names_itself_and_suggests_the_close_field() -> None:
    with pytest.raises(InvalidConfig, match="did you mean 'temperature'") as caught:
        agent_config(None, {"temprature": 0.2})
    assert caught.value.field == "temprature"
    with pytest.raises(InvalidConfig, match="did you mean 'model'") as caught:
        AgentConfig().with_changes(modle="gemini-2.5-pro")
    assert caught.value.field == "modle"
    with pytest.raises(InvalidConfig, match="did you mean 'backend'") as caught:
        runtime_config({"bakend": "scripted"})
    assert caught.value.field == "bakend"


def test_an_unknown_setting_with_nothing_close_lists_the_fields() -> None:
    with pytest.raises(InvalidConfig, match="the fields are model, name, ") as caught:
        agent_config(AgentConfig(), {"zzzz": 1})
    assert caught.value.field == "zzzz"
    assert "compaction_threshold" in str(caught.value)


def test_a_config_that_is_not_an_agent_config_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="expected an AgentConfig or None, got dict") as caught:
        agent_config({"model": "x"}, {})  # type: ignore[arg-type]
    assert caught.value.field == "config"
    base = AgentConfig(temperature=0.5)
    assert agent_config(base, {}) is base
    assert agent_config(base, {"top_k": 3}) == AgentConfig(temperature=0.5, top_k=3)
    assert runtime_config({"store_path": None}).store_path is None


def test_the_runtime_refuses_an_unknown_setting_on_a_given_config(rt: AgentRuntime) -> None:
    with pytest.raises(InvalidConfig, match="did you mean 'temperature'"):
        rt.create_agent(AgentConfig(), temprature=0.2)
    assert rt.agents() == []


class Odd:
    """A value of no type any field takes."""

    def __repr__(self) -> str:
        return "Odd()"


WRONG_TYPES = [Odd(), b"\0", 1j, [Odd()]]


def _fields(kind: type) -> list[str]:
    return [f.name for f in dataclasses.fields(kind)]


@pytest.mark.parametrize("wrong", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("name", _fields(AgentConfig))
def test_every_agent_field_of_a_wrong_type_is_invalid_config_naming_it(
    name: str, wrong: object
) -> None:
    with pytest.raises(InvalidConfig) as caught:
        AgentConfig(**{name: wrong})
    assert caught.value.field == name


@pytest.mark.parametrize("wrong", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("name", _fields(RuntimeConfig))
def test_every_runtime_field_of_a_wrong_type_is_invalid_config_naming_it(
    name: str, wrong: object
) -> None:
    with pytest.raises(InvalidConfig) as caught:
        RuntimeConfig(**{name: wrong})
    assert caught.value.field == name


@pytest.mark.parametrize(
    ("kind", "name"),
    [(AgentConfig, "max_tool_steps"), (AgentConfig, "include_thoughts")]
    + [
        (RuntimeConfig, name)
        for name in _fields(RuntimeConfig)
        if name
        not in {"api_key", "base_url", "api_version", "default_model", "store_path", "store_url"}
    ],
)
def test_none_for_a_required_field_is_invalid_config(kind: type, name: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        kind(**{name: None})
    assert caught.value.field == name


def test_none_stop_sequences_and_tools_mean_none() -> None:
    config = AgentConfig(stop_sequences=None, tools=None)  # type: ignore[arg-type]
    assert config.stop_sequences == () and config.tools == ()
    assert config == AgentConfig()


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"idle_chunk_timeout": 10**400}, "idle_chunk_timeout"),
        ({"quota_max_wait": float("inf")}, "quota_max_wait"),
        ({"store_path": ""}, "store_path"),
        ({"store_path": "a\0b"}, "store_path"),
        ({"thread_name": "   "}, "thread_name"),
    ],
)
def test_runtime_numbers_and_paths_out_of_range(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        RuntimeConfig(**settings)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"top_k": 10**400}, "top_k"),
        ({"max_output_tokens": 2**31}, "max_output_tokens"),
        ({"temperature": float("nan")}, "temperature"),
        ({"system_instruction": "bad \ud800 text"}, "system_instruction"),
        ({"stop_sequences": ["ok", 3]}, "stop_sequences"),
        ({"response_schema": {"type": Odd()}}, "response_schema"),
        ({"response_mime_type": "json"}, "response_mime_type"),
        ({"name": "tab\there"}, "name"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_agent_values_of_the_right_type_but_wrong_are_invalid(
    settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidConfig) as caught:
        AgentConfig(**settings)
    assert caught.value.field == field


class Empty(enum.Enum):
    pass


def positional(x: int, /) -> None:
    """Positional-only."""


def forward(x: NotDefined) -> None:  # type: ignore[name-defined]  # noqa: F821
    """A hint naming nothing."""


def unhashable(x: int) -> None:
    """A list where a type belongs (set below: `from __future__` makes hints strings)."""


unhashable.__annotations__ = {"x": [int]}


def mixed(x: Literal[1, "a"]) -> None:
    """Literal of two kinds."""


def byte_choice(x: Literal[b"a"]) -> None:
    """Literal bytes."""


def no_members(x: Empty) -> None:
    """An Enum with no members."""


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (int, "tool 'int': cannot read its parameters"),
        (len, "tool 'len', parameter 'obj' is positional-only"),
        (positional, "parameter 'x' is positional-only"),
        (forward, "tool 'forward': cannot read its type hints (NameError"),
        (unhashable, "tool 'unhashable', parameter 'x': type [<class 'int'>] is not supported"),
        (mixed, "parameter 'x': Literal values must be all str"),
        (byte_choice, "parameter 'x': Literal values must be all str"),
        (no_members, "parameter 'x': the Enum Empty has no members"),
    ],
    ids=lambda value: getattr(value, "__name__", "message"),
)
def test_tools_that_cannot_be_declared_name_the_tool_and_the_parameter(
    tool: Any, message: str
) -> None:
    with pytest.raises(InvalidConfig, match=message.replace("(", r"\(").replace("[", r"\[")) as c:
        AgentConfig(tools=[tool])
    assert c.value.field == "tools"
    if tool is int:
        assert "wrap it in a def function whose parameters have type hints" in str(c.value)


def test_a_class_tool_is_declared_from_its_init() -> None:
    class Lookup:
        """Look a word up."""

        def __init__(self, word: str, limit: int = 3) -> None:
            self.word = word

    assert as_tool(Lookup).parameters["properties"] == {
        "word": {"type": "string"},
        "limit": {"type": "integer"},
    }


@pytest.fixture
def odd_paths(tmp_path: Path) -> dict[str, Path]:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "gone.txt")
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    return {
        "directory": folder,
        "dangling symlink": dangling,
        "parent is a file": plain / "inner.txt",
        "fifo": fifo,
        "name too long": tmp_path / ("n" * 300 + ".txt"),
        "nul": Path("x\0.txt"),
    }


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("directory", "is a directory, not a file"),
        ("dangling symlink", "it is a symlink to '.*gone.txt', which does not exist"),
        ("parent is a file", "a part of the path before the name is a file, not a folder"),
        ("fifo", r"is a named pipe \(FIFO\), not a file"),
        ("name too long", "File name too long"),
        ("nul", "not a usable path"),
    ],
)
def test_an_unreadable_path_is_invalid_content_naming_it_and_why(
    odd_paths: dict[str, Path], case: str, reason: str
) -> None:
    path = odd_paths[case]
    with pytest.raises(InvalidContent, match=reason) as caught:
        to_parts(path)
    assert repr(str(path))[:40] in str(caught.value)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_a_file_that_fails_to_read_is_invalid_content() -> None:
    """Root reads any file; /proc/self/mem is a regular file whose first read fails (EIO)."""
    with pytest.raises(InvalidContent, match="cannot read '/proc/self/mem': "):
        to_parts(Path("/proc/self/mem"))


def test_odd_content_values_are_invalid_content() -> None:
    with pytest.raises(InvalidContent, match="flatten"):
        to_parts(["a", ["b"]])
    with pytest.raises(InvalidContent, match="unpaired surrogate"):
        to_parts("bad \ud800 text")
    with pytest.raises(InvalidContent, match="a file path must be a str or a Path, got int"):
        art.file(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidContent, match="a TextPart's text must be a str"):
        to_parts(art.TextPart(3))  # type: ignore[arg-type]
    with pytest.raises(InvalidContent, match="not a MIME type"):
        to_parts(art.BlobPart("image/png\n", b"x"))


GOOD_MODELS = [
    "gemini-2.5-flash",
    "models/gemini-2.5-flash",
    "gemini-2.5-flash-preview-05-20",
    "smollm2-135m-instruct",
    "tunedModels/x-1",
    "gemini-2.0-flash-001",
]
BAD_MODELS = [
    "a..b",
    "models/../x",
    "gemini 2.5",
    "a/b",
    "models/a/b",
    "/gemini",
    "tunedModels/",
    "-flash",
    "gemini\n",
    "gem\x00ini",
    "x" * 201,
]


@pytest.mark.parametrize("model", GOOD_MODELS)
def test_model_names_as_the_api_spells_them_are_accepted(model: str) -> None:
    assert AgentConfig(model=model).model == model
    assert RuntimeConfig(default_model=model, store_path=None).default_model == model


@pytest.mark.parametrize("model", BAD_MODELS, ids=repr)
def test_malformed_model_names_are_refused_in_the_config(model: str) -> None:
    with pytest.raises(InvalidConfig, match=r"is not a model name like 'gemini-2\.5-flash'") as c:
        AgentConfig(model=model)
    assert c.value.field == "model"
    with pytest.raises(InvalidConfig) as caught:
        RuntimeConfig(default_model=model, store_path=None)
    assert caught.value.field == "default_model"


SECRET = "AIzaSyTOP-SECRET-value"


@pytest.mark.parametrize(
    ("key", "what"),
    [
        (SECRET + "\0", "a control character"),
        (SECRET + "\n", "a space or line break"),
        (" " + SECRET, "a space or line break"),
        (SECRET[:5] + "\x7f" + SECRET[5:], "a control character"),
        (SECRET + "é", "a non-ASCII character"),
        (SECRET + "\u200b", "a non-ASCII character"),
    ],
    ids=repr,
)
def test_a_malformed_api_key_is_refused_without_showing_it(key: str, what: str) -> None:
    for build in (
        lambda: AgentConfig(api_key=key),
        lambda: RuntimeConfig(api_key=key, store_path=None),
    ):
        with pytest.raises(InvalidConfig, match=what) as caught:
            build()
        assert caught.value.field == "api_key"
        shown = f"{caught.value} {caught.value!r} {caught.value.args}"
        assert SECRET[5:] not in shown and SECRET[:8] not in shown


def test_a_malformed_key_in_the_environment_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", SECRET + "\n")
    with pytest.raises(InvalidConfig, match=r"\$GEMINI_API_KEY contains a space or line") as c:
        RuntimeConfig(store_path=None)
    assert SECRET[5:] not in str(c.value)
    assert RuntimeConfig(backend="scripted", store_path=None).backend == "scripted"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://local host:8000", "not a URL: it has spaces"),
        ("http://", "has no host"),
        ("https://:8080/v1", "has no host"),
        ("http://h\x01st", "control or non-ASCII"),
        ("http://hést", "control or non-ASCII"),
        ("http://h:99999", "Port out of range"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://h/?key=1", "leave out the"),
        ("localhost:8000", "must start with http:// or https://"),
    ],
)
def test_base_url_garbage_is_invalid_config(url: str, message: str) -> None:
    for kind in (AgentConfig, RuntimeConfig):
        with pytest.raises(InvalidConfig, match=message) as caught:
            kind(base_url=url)
        assert caught.value.field == "base_url"
    assert RuntimeConfig(base_url="http://[::1]:8000/api", store_path=None).base_url


@pytest.fixture(scope="module")
def ip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTRT_BACKEND", "scripted")
        mp.setenv("AGENTRT_HOME", str(tmp_path_factory.mktemp("home")))
        shell = global_shell()
        shell.run_line_magic("load_ext", "agentrt_jupyter")
        yield shell
        shell.run_line_magic("unload_ext", "agentrt_jupyter")


def run(ip: Any, cell: str) -> BaseException | None:
    result = ip.run_cell(cell)
    return result.error_before_exec or result.error_in_exec


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("'x", "No closing quotation"),
        ('x --system "unclosed', "No closing quotation"),
        ("x \\", "No escaped character"),
        ("--n", "ambiguous option"),
        ("--model 'gemini 2.5'", "is not a model name"),
        ("--temperature nan", "temperature: must be between 0 and 2"),
        ("--max-tokens 99999999999", "max_output_tokens"),
        ("'bad\tname'", "name: must be at most 100 characters with no control characters"),
        ("x" * 101, "name: must be at most 100"),
    ],
)
def test_every_agent_cell_line_problem_is_a_usage_error(ip: Any, line: str, message: str) -> None:
    error = run(ip, f"%%agent {line}\nhello")
    assert type(error) is UsageError
    assert message in str(error)
    assert len(str(error)) < 300


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("usage 'x", "No closing quotation"),
        ("frobnicate", "invalid choice"),
        ("--all", "unrecognized arguments"),
        ("list a b", "unrecognized arguments"),
        ("usage 'a\tb'", "is not an agent name"),
        ("shutdown " + "y" * 101, "is not an agent name"),
    ],
)
def test_every_agent_line_problem_is_a_usage_error(ip: Any, line: str, message: str) -> None:
    error = run(ip, f"%agent {line}")
    assert type(error) is UsageError
    assert message in str(error)


def test_quotes_group_words_and_are_not_sent(ip: Any) -> None:
    options = loaded_magics(ip).parse_cell_line("'my agent' --system \"be brief\"")
    assert options.name == "my agent"
    assert options.settings == {"system_instruction": "be brief"}


def test_a_cell_after_shutdown_resumes_the_agent(ip: Any) -> None:
    assert run(ip, "%%agent revived\nfirst") is None
    ip.run_line_magic("agent", "shutdown revived")
    assert run(ip, "%%agent revived --out again\nsecond") is None
    assert ip.user_ns["again"].text == "Echo: second"
    history = loaded_magics(ip).runtime.history("revived")
    assert [m.text for m in history] == ["first", "Echo: first", "second", "Echo: second"]


def test_a_cell_after_delete_starts_the_agent_afresh(ip: Any) -> None:
    assert run(ip, "%%agent erased --temperature 0.3\nfirst") is None
    ip.run_line_magic("agent", "delete erased")
    assert run(ip, "%%agent erased --out again\nsecond") is None
    assert ip.user_ns["again"].text == "Echo: second"
    magics = loaded_magics(ip)
    assert [m.text for m in magics.runtime.history("erased")] == ["second", "Echo: second"]
    assert magics.session.agents is not None
    assert magics.session.agents.settings("erased") == {}
