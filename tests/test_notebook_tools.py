"""`%%agent` on the notebook's data in an in-process IPython: --tools, --confirm, --schema,
--out-frame, --map, `%agent tools|approve|deny|mcp`, and the approver and tool-call
blocks on their own (the real-kernel side, with clicks, is tests/test_kernel_tools.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from IPython.core.error import UsageError

from agentrt_jupyter.errors import ReplyInvalid
from agentrt_jupyter.events import ToolCall, ToolResult
from agentrt_jupyter.notebook import approval
from agentrt_jupyter.notebook.approval import Approver, Policy, Request
from agentrt_jupyter.notebook.extension import loaded_magics
from agentrt_jupyter.notebook.toolview import SHOWN_CHARS, CallBlock, ToolCallsView
from agentrt_jupyter.server.process import LocalServer
from tests.shell_helpers import module_shell, run, usage_error

DEFINITIONS = '''
import pandas as pd
from dataclasses import dataclass
from typing import TypedDict
from pydantic import BaseModel
import types

def weather(city: str) -> dict:
    """The weather in a city."""
    return {"city": city, "temp_c": 21}

def untyped(city):
    return city

def big() -> str:
    """A large result."""
    return "x" * 30_000

helpers = types.SimpleNamespace(weather=weather)

class City(BaseModel):
    name: str
    temp_c: int

@dataclass
class Point:
    x: int
    y: int

class Pair(TypedDict):
    left: str
    right: str

Cities = list[City]
POINT = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
frame = pd.DataFrame({"city": ["Oslo", "Lima"], "temp_c": [3, 19]})
'''


ip = module_shell(DEFINITIONS)


def local_server(ip: Any) -> LocalServer:
    server = loaded_magics(ip).runtime.local_server
    assert server is not None
    return server


def last_body(ip: Any, tag: str) -> dict[str, Any]:
    found = [r for r in local_server(ip).requests() if tag in json.dumps(r.get("body"))]
    return dict(found[-1]["body"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--tools nothing_here", "no 'nothing_here' in the notebook's namespace"),
        ("--tools helpers.nope", "helpers.nope does not exist"),
        ("--tools 1x", "is not a name"),
        ("--tools @bogus", "no toolset '@bogus'"),
        ("--tools untyped", "parameter 'city' needs a type hint"),
        ("--tools weather,helpers.weather", "two tools are named 'weather'"),
        ("--tools none,weather", "give it alone"),
        ("cfm --confirm", "has none from the cells: add --tools"),
        ("--tools weather --confirm rain", "no tool named 'rain'"),
        ("--out-frame rows", "give --schema too"),
        ("--schema City --out-frame 1x", "--out-frame needs a variable name"),
        ("--schema frame", "--schema frame"),
        ("--schema missing", "no 'missing'"),
        ("--tool-timeout 0", "--tool-timeout is in seconds"),
        ("name --map frame", "leave out NAME"),
        ("--map frame --background", "leave out --background"),
        ("--map weather", "needs a pandas DataFrame"),
        ("--map frame --tools @python", "@python"),
    ],
)
def test_data_flag_mistakes_are_usage_errors(ip: Any, line: str, message: str) -> None:
    assert message in usage_error(ip, f"%%agent {line}\nhello {{city}}")


def test_tools_persist_until_changed_and_are_listed(ip: Any, tag: str) -> None:
    call = '@@call weather {"city": "Oslo"}'
    assert run(ip, f"%%agent lister --tools helpers.weather,@data\n{call}\n{tag}") is None
    declared = [d["name"] for t in last_body(ip, tag)["tools"] for d in t["functionDeclarations"]]
    assert declared[:2] == ["weather", "list_variables"]
    listing = ip.run_line_magic("agent", "tools lister")
    assert list(listing["tool"])[:2] == ["weather", "list_variables"]
    assert list(listing["from"])[:2] == ["function helpers.weather", "@data"]
    assert set(listing["approval"]) == {"no"}
    assert '"city"' in listing["parameters"][0]
    assert run(ip, f"%%agent lister\n{tag} later") is None
    assert last_body(ip, tag).get("tools")
    assert run(ip, f"%%agent lister --tools none\n{tag} none") is None
    assert not last_body(ip, tag).get("tools")
    with pytest.raises(UsageError, match="no agent 'nobody'"):
        ip.run_line_magic("agent", "tools nobody")


def test_a_large_result_is_cut_for_display_only(ip: Any, tag: str) -> None:
    assert run(ip, f"%%agent big --tools big --out r\n@@call big {{}}\n{tag}") is None
    response = last_body(ip, tag)["contents"][-1]["parts"][0]["functionResponse"]["response"]
    assert response == {"result": "x" * 30_000}
    block = CallBlock("big", {}, 0.0, 0.0, 1.0, "x" * 30_000)
    assert len(block.html()) < SHOWN_CHARS + 2_000 and "more characters, not shown" in block.html()


def test_the_data_tools_read_the_namespace(ip: Any, tag: str) -> None:
    call = '@@call describe_dataframe {"name": "frame"}'
    cell = f"%%agent looker --tools @data --out r\n{call}\n{tag}"
    assert run(ip, cell) is None
    assert '"shape":[2,2]' in ip.user_ns["r"].text


@pytest.mark.parametrize(
    ("schema", "reply", "expected"),
    [
        ("City", '{"name": "Oslo", "temp_c": 3}', "City(name='Oslo', temp_c=3)"),
        ("Point", '{"x": 1, "y": 2}', "Point(x=1, y=2)"),
        ("Pair", '{"left": "a", "right": "b"}', "{'left': 'a', 'right': 'b'}"),
        ("POINT", '{"x": 4}', "{'x': 4}"),
        ("Cities", '[{"name": "Oslo", "temp_c": 3}]', "[City(name='Oslo', temp_c=3)]"),
    ],
)
def test_every_schema_kind_round_trips_into_variables(
    ip: Any, tag: str, schema: str, reply: str, expected: str
) -> None:
    ip.user_ns.pop("parsed", None)
    cell = f"%%agent shaped --schema {schema} --out parsed --out-frame rows\n@@reply {reply}\n{tag}"
    assert run(ip, cell) is None
    assert repr(ip.user_ns["parsed"]) == expected
    assert len(ip.user_ns["rows"]) == 1
    body = last_body(ip, tag)
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert "responseJsonSchema" in body["generationConfig"]
    assert run(ip, f"%%agent shaped\n{tag} free text again") is None
    assert "responseJsonSchema" not in last_body(ip, tag).get("generationConfig", {})


def test_a_reply_that_does_not_fit_is_reply_invalid_and_sets_nothing(ip: Any) -> None:
    ip.user_ns.pop("never_set", None)
    error = run(ip, '%%agent unfit --schema City --out never_set\n@@reply {"name": 3}\nx')
    assert isinstance(error, ReplyInvalid)
    assert error.raw_text == '{"name": 3}' and "temp_c" in error.problem
    assert "never_set" not in ip.user_ns
    (line,) = error._render_traceback_()  # type: ignore[attr-defined]
    assert "ReplyInvalid" in line and "partial" not in line and "raw_text" in line


def test_map_runs_the_template_over_the_rows(ip: Any) -> None:
    assert run(ip, "%%agent --map frame --out mapped\nHow warm is {city}?") is None
    mapped = ip.user_ns["mapped"]
    assert list(mapped["reply"]) == ["Echo: How warm is Oslo?", "Echo: How warm is Lima?"]


def test_confirm_outside_a_kernel_fails_before_the_call(ip: Any) -> None:
    error = usage_error(ip, "%%agent outside --tools weather --confirm\nhi")
    assert "not a Jupyter kernel" in error
    assert "outside" not in [i.name for i in loaded_magics(ip).runtime.agents()]


def test_approve_with_nothing_waiting_says_so(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("agent", "approve")
    ip.run_line_magic("agent", "deny nobody")
    out = capsys.readouterr().out
    assert "no tool call is waiting for approval" in out
    assert "no tool call of 'nobody' is waiting" in out


def test_mcp_servers_are_declared_listed_and_removed(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("agent", "mcp add files -- npx -y some-server --root /tmp")
    ip.run_line_magic("agent", "mcp add remote http://127.0.0.1:9/mcp")
    listed = ip.run_line_magic("agent", "mcp list")
    assert list(listed["name"]) == ["files", "remote"]
    assert list(listed["transport"]) == ["stdio", "http"]
    ip.run_line_magic("agent", "mcp remove files")
    assert list(ip.run_line_magic("agent", "mcp list")["name"]) == ["remote"]
    with pytest.raises(UsageError, match="no MCP server named 'files'"):
        ip.run_line_magic("agent", "mcp remove files")
    with pytest.raises(UsageError, match="after --"):
        ip.run_line_magic("agent", "mcp add bad npx server")
    with pytest.raises(UsageError, match="usage"):
        ip.run_line_magic("agent", "mcp frobnicate")
    assert "use it with --tools mcp:files" in capsys.readouterr().out


@dataclasses.dataclass
class FakeHandle:
    status: str = "running"
    done: bool = False


class FakeSurface:
    """An approval surface that records what it was told."""

    per_turn = True

    def __init__(self, problem: str | None = None) -> None:
        self.approve_all = False
        self.problem = problem
        self.asked: list[Request] = []
        self.settled: list[Request] = []
        self.ran: list[str] = []
        self.arrived = asyncio.Event()

    async def question(self, index: int) -> Request:
        """The `index`-th question, once it is asked."""
        while len(self.asked) <= index:
            self.arrived.clear()
            await self.arrived.wait()
        return self.asked[index]

    def why_not(self) -> str | None:
        return self.problem

    def ask(self, request: Request) -> None:
        self.asked.append(request)
        self.arrived.set()

    def settle(self, request: Request) -> None:
        self.settled.append(request)

    def running(self, tool: str) -> None:
        self.ran.append(tool)


def bound(approver: Approver, surface: FakeSurface, handle: FakeHandle) -> None:
    approver.bind(approver.claim(), handle, surface)  # type: ignore[arg-type]


def test_the_approver_asks_what_its_policy_covers_and_python_always() -> None:
    async def scenario() -> list[bool]:
        approver = Approver("a")
        approver.policy = Policy(tools=frozenset({"f"}), asks_itself=frozenset({"python"}))
        surface = FakeSurface()
        bound(approver, surface, FakeHandle())
        unasked = await approver.confirm("g", {})
        asked = asyncio.ensure_future(approver.confirm("f", {"x": 1}))
        (await surface.question(0)).answer("approve_all")
        first = await asked
        again = await approver.confirm("f", {"x": 2})  # covered by "approve all"
        python = asyncio.ensure_future(approver.approve_python("python", {"code": "1"}))
        (await surface.question(1)).answer("deny")
        assert not surface.asked[1].offers_all and surface.asked[0].offers_all
        return [unasked, first, again, await python]

    assert asyncio.run(scenario()) == [True, True, True, False]


def test_no_answer_in_time_is_a_denial_and_late_clicks_do_nothing() -> None:
    async def scenario() -> tuple[bool, Request]:
        approver = Approver("a")
        approver.policy = Policy(every_tool=True)
        approver.timeout = 0.01
        surface = FakeSurface()
        bound(approver, surface, FakeHandle())
        return await approver.confirm("f", {}), surface

    answer, surface = asyncio.run(scenario())
    request = surface.settled[0]
    assert answer is False and "no answer within 0.01 s" in request.outcome
    assert request.answer("approve") is False
    assert approval.pending() == []


def test_a_surface_that_cannot_answer_refuses_without_asking() -> None:
    async def scenario() -> tuple[bool, FakeSurface]:
        approver = Approver("a")
        approver.policy = Policy(every_tool=True)
        surface = FakeSurface("no buttons here")
        bound(approver, surface, FakeHandle())
        return await approver.confirm("f", {}), surface

    answer, surface = asyncio.run(scenario())
    assert answer is False and surface.asked == []
    assert "not asked, so not run: no buttons here" in surface.settled[0].outcome


def test_the_question_goes_to_the_cell_of_the_running_turn() -> None:
    async def scenario() -> tuple[FakeSurface, FakeSurface]:
        approver = Approver("a")
        approver.policy = Policy(every_tool=True)
        running, queued = FakeSurface(), FakeSurface()
        bound(approver, running, FakeHandle("running"))
        bound(approver, queued, FakeHandle("queued"))
        call = asyncio.ensure_future(approver.confirm("f", {}))
        (await running.question(0)).answer("approve")
        assert await call
        return running, queued

    running, queued = asyncio.run(scenario())
    assert len(running.asked) == 1 and queued.asked == []


def test_a_cancelled_turn_withdraws_its_question() -> None:
    async def scenario() -> FakeSurface:
        approver = Approver("a")
        approver.policy = Policy(every_tool=True)
        surface = FakeSurface()
        bound(approver, surface, FakeHandle())
        call = asyncio.ensure_future(approver.confirm("f", {}))
        await surface.question(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return surface

    surface = asyncio.run(scenario())
    assert surface.settled[0].outcome == "the turn was cancelled"
    assert approval.pending() == []


def test_a_turn_no_cell_claimed_asks_in_a_host_or_waits_for_agent_approve() -> None:
    async def scenario() -> bool:
        approver = Approver("hosted")
        approver.policy = Policy(every_tool=True)
        host = FakeSurface()
        approval.add_host("hosted", host)  # type: ignore[arg-type]
        try:
            call = asyncio.ensure_future(approver.confirm("f", {}))
            await host.question(0)
            assert approval.pending("hosted") == host.asked
            assert approval.answer_pending("hosted", "approve") is host.asked[0]
            return await call
        finally:
            approval.remove_host("hosted", host)  # type: ignore[arg-type]

    assert asyncio.run(scenario()) is True


class FakeView:
    live = False
    shell = None
    parent = None
    reply_id = "r"


@dataclasses.dataclass
class EventsSoFar:
    events: list[Any]

    def events_since(self, index: int) -> list[Any]:
        return self.events[index:]


def test_tool_blocks_follow_calls_and_results() -> None:
    calls = ToolCallsView(FakeView())  # type: ignore[arg-type]
    turn = EventsSoFar([ToolCall("1", "f", {"x": 1})])
    calls._handle = turn  # type: ignore[assignment]
    calls.running("f")
    turn.events.append(ToolResult("1", "f", None, "ValueError: no"))
    calls._catch_up()
    block = calls.blocks[0]
    assert not block.open and block.error == "ValueError: no"
    assert "error" in block.text() and "<details" in block.html() and "ValueError" in block.html()


def test_agent_cancel_stops_map_runs_too(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from agentrt_jupyter.batch.engine import start_map

    run_ = start_map(loaded_magics(ip).runtime, ip.user_ns["frame"], "@@fault hang\n{city}")
    ip.run_line_magic("agent", "cancel")
    assert "1 map run" in capsys.readouterr().out
    assert set(run_.result()["status"]) == {"cancelled"}


def test_a_cell_that_fails_to_start_leaves_the_policy_as_it_was(ip: Any) -> None:
    assert run(ip, "%%agent keeps --tools weather\nhi") is None
    assert isinstance(run(ip, "%%agent keeps --confirm\nhi"), UsageError)  # no kernel here
    assert list(ip.run_line_magic("agent", "tools keeps")["approval"]) == ["no"]
    assert run(ip, "%%agent keeps\nstill runs unasked") is None


def test_a_blocking_map_cell_and_a_bad_approval_timeout(ip: Any) -> None:
    ip.run_cell_magic("agent", "--map frame --out blocked", "Cool {city}?")
    assert list(ip.user_ns["blocked"]["status"]) == ["ok", "ok"]
    ip.run_line_magic("config", "AgentMagics.approval_timeout = -1")
    try:
        error = run(ip, "%%agent keeps\nhi")
    finally:
        ip.run_line_magic("config", "AgentMagics.approval_timeout = 120")
    assert isinstance(error, UsageError) and "approval_timeout" in str(error)
