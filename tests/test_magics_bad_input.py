"""Bad input to the magics (issue 17 items 17 and 22): each is a UsageError that says why,
before anything runs, and nothing the kernel lives on is replaced."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError

from tests.shell_helpers import agent_shell, run

RESERVED = [
    "In",
    "Out",
    "_",
    "__",
    "___",
    "_i",
    "_ii",
    "_iii",
    "_i7",
    "_7",
    "_oh",
    "_ih",
    "_dh",
    "get_ipython",
    "exit",
    "quit",
    "__builtins__",
    "__name__",
    "__doc__",
]


@pytest.fixture(scope="module")
def ip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with agent_shell(tmp_path_factory.mktemp("home")) as shell:
        shell.user_ns["rows"] = pd.DataFrame({"a": [1]})
        shell.user_ns["Shape"] = dict
        yield shell


def _refused(error: BaseException | None, *words: str) -> str:
    assert isinstance(error, UsageError), error
    message = str(error)
    for word in words:
        assert word in message
    return message


@pytest.mark.parametrize("name", RESERVED)
def test_out_refuses_the_names_the_kernel_lives_on(ip: Any, name: str) -> None:
    before = ip.user_ns.get(name)
    message = _refused(run(ip, f"%%agent --out {name}\nhello"), f"--out {name}", "another")
    assert "Python" in message
    assert ip.user_ns.get(name) is before
    assert run(ip, "print(1)") is None


@pytest.mark.parametrize("name", ["In", "_oh", "__builtins__"])
def test_out_frame_and_map_out_refuse_them_too(ip: Any, name: str) -> None:
    schema_cell = f"%%agent --schema Shape --out-frame {name}\nhello"
    _refused(run(ip, schema_cell), f"--out-frame {name}")
    _refused(run(ip, f"%%agent --map rows --out {name}\nrow {{a}}"), f"--out {name}")


def test_ordinary_names_close_to_reserved_ones_are_accepted(ip: Any) -> None:
    assert run(ip, "%%agent --out _in\nhello") is None
    assert run(ip, "%%agent --out _idea\nhello") is None
    assert run(ip, "%%agent --out __private\nhello") is None
    assert ip.user_ns["__private"].text == "Echo: hello"


def test_a_zero_tool_timeout_says_it_must_be_above_zero(ip: Any) -> None:
    message = _refused(run(ip, "%%agent --tools none --tool-timeout 0\nhi"), "--tool-timeout")
    assert "more than 0" in message and "at most 86400" in message
    assert "between" not in message


def test_a_bad_approval_timeout_says_the_range_the_same_way(ip: Any) -> None:
    ip.run_line_magic("config", "AgentMagics.approval_timeout = 0")
    try:
        message = _refused(run(ip, "%agent approve"), "AgentMagics.approval_timeout")
    finally:
        ip.run_line_magic("config", "AgentMagics.approval_timeout = 120")
    assert "more than 0" in message


def test_a_bad_base_url_names_the_setting_it_came_from(ip: Any) -> None:
    # $AGENTRT_BACKEND is set (to "scripted") by the shell: the base_url does not come from it.
    ip.run_line_magic("config", "AgentMagics.base_url = 'ftp://example.org'")
    try:
        message = _refused(run(ip, "%%agent\nhi"), "base_url", "ftp://example.org")
    finally:
        ip.run_line_magic("config", "AgentMagics.base_url = None")
    assert message.endswith("(from AgentMagics.base_url)")
    assert "AGENTRT_BACKEND" not in message
    assert run(ip, "%%agent\nhi again") is None


def test_a_bad_backend_from_the_environment_still_says_so(
    ip: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_BACKEND", "nonsense")
    run(ip, "%agent shutdown")
    _refused(run(ip, "%%agent\nhi"), "backend", "(from $AGENTRT_BACKEND)")
    monkeypatch.setenv("AGENTRT_BACKEND", "scripted")
    assert run(ip, "%%agent\nhi") is None


@pytest.mark.parametrize("url", ["http://a b", "http://host/a path", "http://a..b/mcp"])
def test_mcp_add_refuses_a_url_that_is_not_one(ip: Any, url: str) -> None:
    _refused(run(ip, f"%agent mcp add spaced '{url}'"), "not a URL")
    assert "spaced" not in list(ip.run_line_magic("agent", "mcp list")["name"])


def test_a_control_character_in_a_name_is_shown_escaped(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for line in ("%agent tools 'a\x00'", "%agent deny 'a\x00'", "%agent tools a b\x07"):
        message = _refused(run(ip, line))
        assert "\x00" not in message and "\x07" not in message
    assert "\x00" not in capsys.readouterr().out


def test_agent_commands_still_take_ordinary_names(ip: Any) -> None:
    assert run(ip, "%%agent plain --out kept\nhi") is None
    assert isinstance(ip.run_line_magic("agent", "tools plain"), pd.DataFrame)


def test_the_store_path_message_says_where_it_came_from(ip: Any) -> None:
    ip.run_line_magic("config", "AgentMagics.store_path = '~nobody-such-user/x.sqlite3'")
    try:
        _refused(run(ip, "%%agent\nhi"), "store_path", "AgentMagics.store_path")
    finally:
        ip.run_line_magic("config", "AgentMagics.store_path = None")
