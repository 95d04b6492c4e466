"""The magics in an in-process IPython shell: options, interpolation, settings, line magics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from agentrt_jupyter.errors import BackendError, QuotaExceeded, TurnCancelled
from agentrt_jupyter.notebook.display import footer_line, reply_bundle, short_message
from agentrt_jupyter.notebook.extension import loaded_magics
from agentrt_jupyter.notebook.interpolate import interpolate
from agentrt_jupyter.notebook.magics import AgentMagics
from agentrt_jupyter.notebook.transcript import plural
from tests.shell_helpers import module_shell, run, usage_error

NS = {"name": "Ann", "n": 3, "pi": 3.14159, "d": {"k": [1, 2]}, "Out": {1: "first"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hi {name}", "hi Ann"),
        ("{n + 1} {pi:.2f} {name!r}", "4 3.14 'Ann'"),
        ("{d['k'][1]} and {Out[1]}", "2 and first"),
        ("{undefined} stays, {n} goes", "{undefined} stays, 3 goes"),
        ('JSON {"a": {"b": 1}} is left alone', 'JSON {"a": {"b": 1}} is left alone'),
        ('@@call weather {"city": "Paris"}', '@@call weather {"city": "Paris"}'),
        ("{{name}} is literal", "{name} is literal"),
        ("{ n } with spaces is left alone", "{ n } with spaces is left alone"),
        ("unclosed {name and more", "unclosed {name and more"),
        ("code: {k: v for k in items}", "code: {k: v for k in items}"),
        ("{n!=3}", "False"),
    ],
)
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate(text, NS) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{n +}", "not a Python expression"),
        ("{d['missing']}", "KeyError"),
        ("{n / 0}", "ZeroDivisionError"),
        ("{pi:zz}", "Unknown format code"),
    ],
)
def test_bad_interpolation_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        interpolate(text, NS)
    assert "--no-interpolate" in str(caught.value)


def test_reply_bundles() -> None:
    assert reply_bundle("# hi", "markdown", final=True)["text/markdown"] == "# hi"
    assert reply_bundle("x", "text", final=True) == {"text/plain": "x"}
    assert reply_bundle("a = 1", "code", final=True)["text/markdown"] == "```\na = 1\n```"
    parsed = reply_bundle('```json\n{"a": 1}\n```', "json", final=True)
    assert parsed["application/json"] == {"a": 1}
    assert "not valid JSON" in reply_bundle("{oops", "json", final=True)["text/markdown"]


def test_short_messages_say_what_to_do() -> None:
    day = QuotaExceeded("429", scope="day", quota_id="PerDay")
    assert "per-day" in short_message(day) and "another key" in short_message(day)
    minute = QuotaExceeded("429", scope="minute", retry_after=42.0)
    assert "try again in 42 s" in short_message(minute)
    refused = BackendError("denied", code=403, status="PERMISSION_DENIED")
    assert "GOOGLE_API_KEY" in short_message(refused)


ip = module_shell()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--bogus", "unrecognized arguments"),
        ("--temperature hot", "invalid float value"),
        ("--temperature 9", "temperature"),
        ("--max-tokens 0", "max_output_tokens"),
        ("--format yaml", "invalid choice"),
        ("--out 1x", "--out needs a variable name"),
        ("--out class", "--out needs a variable name"),
        ("two names", "unrecognized arguments"),
    ],
)
def test_option_errors_are_usage_errors(ip: Any, line: str, message: str) -> None:
    assert message in usage_error(ip, f"%%agent {line}\nhello")


def test_empty_cell_and_bad_interpolation_are_usage_errors(ip: Any) -> None:
    assert "empty" in str(run(ip, "%%agent\n   \n"))
    assert "cannot interpolate" in str(run(ip, "%%agent\n{len(1)}"))


def test_cell_interpolates_and_stores_the_result(ip: Any) -> None:
    ip.user_ns["topic"] = "owls"
    assert run(ip, "%%agent inproc --out res\ntell me about {topic}") is None
    assert ip.user_ns["res"].text == "Echo: tell me about owls"
    assert run(ip, "%%agent inproc --out raw --no-interpolate\n{topic}") is None
    assert ip.user_ns["raw"].text == "Echo: {topic}"


def test_an_agent_shut_down_behind_the_magics_back_is_resumed(ip: Any) -> None:
    assert run(ip, "%%agent phoenix\nfirst") is None
    runtime = loaded_magics(ip).runtime
    runtime.shutdown_agent("phoenix")
    assert run(ip, "%%agent phoenix --out again\nsecond") is None
    assert ip.user_ns["again"].text == "Echo: second"
    assert [m.text for m in runtime.history("phoenix")][-2:] == ["second", "Echo: second"]


def test_new_clears_history_and_settings_apply(ip: Any) -> None:
    assert run(ip, "%%agent fresh\none") is None
    assert run(ip, "%%agent fresh --new --temperature 0.5 --out r\ntwo") is None
    runtime = loaded_magics(ip).runtime
    assert [m.text for m in runtime.history("fresh")] == ["two", "Echo: two"]
    assert ip.user_ns["r"].text == "Echo: two"


def test_errors_raise_the_runtime_error_with_a_one_line_render(ip: Any) -> None:
    error = run(ip, "%%agent faulty\n@@fault 500\nhi")
    assert isinstance(error, BackendError)
    rendered = getattr(error, "_render_traceback_")()  # noqa: B009 - set on the instance
    assert rendered == [f"\x1b[0;31mBackendError\x1b[0m: {error}"]


def test_cancelled_turn_is_not_an_error(ip: Any) -> None:
    assert run(ip, "%%agent canceller --background --out late\n@@fault hang\nhi") is None
    ip.run_line_magic("agent", "cancel canceller")
    ip.run_line_magic("agent", "wait canceller")
    assert ip.user_ns["late"].status == "cancelled"
    assert isinstance(ip.user_ns["late"].error, TurnCancelled)


def test_line_magic_commands(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ip, "%%agent lines\nhi") is None
    listing = ip.run_line_magic("agent", "list")
    assert "lines" in set(listing["name"])
    assert len(ip.run_line_magic("agent", "usage lines")) == 1
    assert len(ip.run_line_magic("agent", "history lines")) == 2
    assert len(ip.run_line_magic("agent", "ledger")) >= 1
    ip.run_line_magic("agent", "reset lines")
    assert len(ip.run_line_magic("agent", "history lines")) == 0
    ip.run_line_magic("agent", "config")
    ip.run_line_magic("agent", "help")
    out = capsys.readouterr().out
    assert "backend: scripted (from $AGENTRT_BACKEND)" in out and "%agent ledger" in out
    with pytest.raises(UsageError, match="invalid choice"):
        ip.run_line_magic("agent", "frobnicate")
    with pytest.raises(UsageError, match="needs the NAME"):
        ip.run_line_magic("agent", "delete")
    with pytest.raises(UsageError, match="no agent 'nobody'"):
        ip.run_line_magic("agent", "usage nobody")
    ip.run_line_magic("agent", "delete lines")
    assert "lines" not in set(ip.run_line_magic("agent", "list")["name"])


def test_settings_are_traitlets_and_restart_the_runtime(ip: Any) -> None:
    magics = loaded_magics(ip)
    before = magics.runtime
    ip.run_line_magic("config", "AgentMagics.default_model = 'other-model'")
    try:
        assert before.closed
        assert magics.session.runtime is None  # reading starts nothing
        assert magics.session.ensure_runtime().config.default_model == "other-model"
    finally:
        ip.run_line_magic("config", "AgentMagics.default_model = None")
    with pytest.raises(Exception, match="updates_per_second"):
        magics.updates_per_second = 50


def test_missing_key_is_a_short_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTRT_BACKEND", "gemini")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    magics = AgentMagics(shell=None)
    with pytest.raises(UsageError, match=r"needs an API key.*AGENTRT_BACKEND"):
        magics.runtime_config()


def test_footer_line() -> None:
    from agentrt_jupyter.conversation import Usage
    from agentrt_jupyter.handle import TurnResult

    result = TurnResult(
        "a", 1, "cancelled", "x", "", Usage(3, 0, 4, 1, 0, 8), "STOP", "m", 0.25, 1.5, 0
    )
    assert footer_line(result) == (
        "CANCELLED · m · 3 in / 4 out / 1 thoughts · first token 0.25 s · 1.50 s"
    )


def test_agent_cells_become_awaiting_cells_only_where_they_can(ip: Any) -> None:
    assert "await" in ip.transform_cell("%%agent x --new\nbody {y}\n")
    assert "await" not in ip.transform_cell("%%agent?\n")
    assert "await" not in ip.transform_cell("%%agents\nbody\n")
    ip.run_line_magic("autoawait", "off")
    try:
        assert "run_cell_magic" in ip.transform_cell("%%agent x\nbody\n")
        assert run(ip, "%%agent blocking --out blocked\nsync") is None
        assert ip.user_ns["blocked"].text == "Echo: sync"
    finally:
        ip.run_line_magic("autoawait", "on")
    assert "--background" in (loaded_magics(ip).agent_cell.__doc__ or "")


def test_an_undefined_name_in_braces_gets_a_one_line_note(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns["shown"] = "owls"
    prompt = 'about {shown} and {typo}, {typo} again; {"json": 1}, {typo:>9}, {k: v for k in x}'
    assert run(ip, f"%%agent noted --out noted\n{prompt}") is None
    assert ip.user_ns["noted"].text.startswith("Echo: about owls and {typo}, {typo} again")
    notes = [line for line in capsys.readouterr().out.splitlines() if "sent as written" in line]
    assert notes == [
        "agentrt: {typo} was sent as written: no variable typo defined "
        "(write {{ and }} to send braces without this note)"
    ]
    assert run(ip, '%%agent noted\n{"only": "json"} and code {k: v for k in x}') is None
    assert "sent as written" not in capsys.readouterr().out


def test_interpolation_reports_bare_undefined_names_only() -> None:
    missing: list[str] = []
    interpolate("{a} {a} {b.c} {d!r} {e:>3} {n} {f(1)}", NS, missing)
    assert missing == ["a"]


def test_list_uses_nullable_integers_and_shows_no_none(ip: Any) -> None:
    assert run(ip, "%%agent counted\nhi") is None
    listing = ip.run_line_magic("agent", "list")
    assert {str(listing[c].dtype) for c in ("turns", "queued", "total_tokens")} == {"Int64"}
    assert str(listing["running_for"].dtype) == "float64"  # seconds
    row = listing[listing["name"] == "counted"]
    assert row["running_for"].isna().all() and int(row["turns"].iloc[0]) == 1
    for shown in (repr(listing), listing._repr_html_()):
        assert "None" not in shown and "NaN" not in shown and "<NA>" not in shown


def test_history_usage_and_ledger_are_full_frames_shown_compactly(ip: Any) -> None:
    from agentrt_jupyter.frames import COMPACT_COLUMNS, ledger_frame

    assert run(ip, "%%agent compacted\nhi") is None
    for command, kind in (("history", "history"), ("usage", "usage"), ("ledger", "ledger")):
        frame = ip.run_line_magic("agent", f"{command} compacted")
        assert len(frame.columns) > len(COMPACT_COLUMNS[kind])  # the whole frame
        html = frame._repr_html_()
        assert "+00:00" not in html and "white-space: nowrap" in html
    full = ledger_frame(loaded_magics(ip).runtime)
    assert list(ip.run_line_magic("agent", "ledger").dtypes) == list(full.dtypes)


def test_cell_magic_help_names_the_cell_magic(ip: Any) -> None:
    usage = loaded_magics(ip).agent_cell.__doc__ or ""
    assert "%%agent [" in usage and "%agent [" not in usage.replace("%%agent [", "")
    assert "%agent [" in (loaded_magics(ip).agent_line.__doc__ or "")


def test_counts_are_pluralised(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ip, "%%agent counted_once\nhi") is None
    ip.run_line_magic("agent", "shutdown counted_once")
    ip.run_line_magic("agent", "resume counted_once")
    ip.run_line_magic("agent", "cache")
    out = capsys.readouterr().out
    assert "counted_once: resumed, 1 turn, 2 messages" in out
    assert "turns" not in out.split("resumed")[1].splitlines()[0].split(",")[1]
    assert (
        plural(1, "reply", "replies") == "1 reply" and plural(2, "reply", "replies") == "2 replies"
    )


def test_the_footer_names_what_answered() -> None:
    from agentrt_jupyter.conversation import Usage
    from agentrt_jupyter.handle import TurnResult

    result = TurnResult(
        "a", 1, "complete", "x", "", Usage(3, 0, 4, 0, 0, 7), "STOP", "m", None, 1, 0
    )
    assert footer_line(result, "scripted") == "scripted · m · 3 in / 4 out / 0 thoughts · 1.00 s"


def test_the_footer_names_a_base_url_by_its_host_only() -> None:
    from agentrt_jupyter.config import RuntimeConfig
    from agentrt_jupyter.notebook.display import answered_by

    proxy = RuntimeConfig(base_url="https://user:secret@proxy.example:8443/gemini", api_key="k")
    assert answered_by(proxy) == "proxy.example:8443"
    assert answered_by(RuntimeConfig(backend="scripted")) == "scripted"


def test_the_footer_names_the_host_of_googles_base_url_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentrt_jupyter.config import RuntimeConfig
    from agentrt_jupyter.notebook.display import answered_by

    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    config = RuntimeConfig(backend="gemini", api_key="k")
    assert answered_by(config) is None
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://me:pw@gateway.internal:9000/v1")
    assert answered_by(config) == "gateway.internal:9000"
    configured = RuntimeConfig(backend="gemini", api_key="k", base_url="http://other:1")
    assert answered_by(configured) == "other:1"


def test_a_cell_that_changes_runtime_settings_warms_the_new_runtime_up(ip: Any) -> None:
    """Several `%config` lines restart the runtime as often; one warm-up follows the cell."""
    magics = loaded_magics(ip)
    first = magics.runtime
    before = magics.store_path
    try:
        assert ip.run_cell(
            "%config AgentMagics.store_path = ''\n%config AgentMagics.default_model = 'gemini-x'"
        ).success
        warmed = magics.session.runtime
        assert warmed is not None and warmed is not first and first.closed
        assert magics.session.warm_up is not None
        assert magics.session.warm_up.result(timeout=60) is None
        assert ip.run_cell("x = 1").success
        assert magics.session.runtime is warmed  # an ordinary cell restarts nothing
    finally:  # %config wrote the shell's config, which later loads of the extension read
        for name in ("store_path", "default_model"):
            ip.config.AgentMagics.pop(name, None)
        magics.default_model = None
        magics.store_path = before


def test_every_agent_command_the_line_accepts_has_a_handler(ip: Any) -> None:
    from agentrt_jupyter.notebook.commands import AgentCommands
    from agentrt_jupyter.notebook.magics import COMMANDS

    magics = loaded_magics(ip)
    assert set(AgentCommands(magics.session, magics, "").handlers) == set(COMMANDS)


def test_switching_the_model_applies_to_the_same_agent(ip: Any) -> None:
    """A settings change keeps the agent: its id, conversation and stored record; no
    "disconnected" record appears beside it (issue 17 item 13)."""
    assert run(ip, "%%agent switcher\nfirst") is None
    runtime = loaded_magics(ip).runtime
    [before] = [info for info in runtime.agents() if info.name == "switcher"]
    stored_before = [c.id for c in runtime.conversations() if c.name == "switcher"]
    assert run(ip, "%%agent switcher --model other-model --out switched\nsecond") is None
    assert ip.user_ns["switched"].model == "other-model"
    runtime.wait_for_idle("switcher", 10)
    [after] = [info for info in runtime.agents() if info.name == "switcher"]
    assert (after.id, after.model, after.state, after.turn_count) == (
        before.id, "other-model", "idle", 2
    )  # fmt: skip
    assert [m.text for m in runtime.history("switcher")] == [
        "first", "Echo: first", "second", "Echo: second"
    ]  # fmt: skip
    assert [c.id for c in runtime.conversations() if c.name == "switcher"] == stored_before
    assert run(ip, "%%agent switcher --system 'be brief' --temperature 0.5\nthird") is None
    [last] = [info for info in runtime.agents() if info.name == "switcher"]
    assert (last.id, last.model, last.turn_count) == (before.id, "other-model", 3)
