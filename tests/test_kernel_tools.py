"""`%%agent` with tools in a real kernel: declarations on the wire, tool-call blocks,
Approve / Deny / Approve all clicks (real comm messages), timeouts, `@python`, cancel
during a tool, a hanging tool, MCP servers and `--map`.

One kernel serves the module (the scripted backend on the session's server, a store under
a temporary home). Tool side effects are files under `tmp_path`, so a test can see from
outside that a call did not run while its cell still waits for a click.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter.server.process import LocalServer
from tests.conftest import assert_valid_conversation, requests_with
from tests.kernel_helpers import (
    Kernel,
    Message,
    display_id,
    extension_kernel,
    saved_outputs,
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]
MCP_SERVER = Path(__file__).with_name("mcp_server.py")
TOOLS_CELL = """
import pathlib, threading
def touch(path: str) -> str:
    \"\"\"Create the file at path.\"\"\"
    pathlib.Path(path).touch()
    return "made " + path
release = threading.Event()
def wait_released() -> str:
    \"\"\"Wait until the test lets go.\"\"\"
    release.wait(60)
    return "released late"
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, server: LocalServer) -> Iterator[Kernel]:
    home = tmp_path_factory.mktemp("kernel-tools")
    with extension_kernel(home, server.url, server.token, TOOLS_CELL) as running:
        yield running


def clicks_while_awaiting(kernel: Kernel) -> bool:
    module = "__import__('agentrt_jupyter.notebook.approval').notebook.approval"
    return bool(kernel.value(f"{module}.clicks_while_awaiting()"))


def from_cell(kernel: Kernel, msg_id: str) -> list[Message]:
    """The messages read since cell `msg_id` started (widgets a turn makes after a click
    are parented to the click on ipykernel 6, so their parent does not name the cell)."""
    starts = [
        i for i, m in enumerate(kernel.messages) if m["parent_header"].get("msg_id") == msg_id
    ]
    return kernel.messages[starts[0] :] if starts else []


def buttons(kernel: Kernel, msg_id: str, label: str, count: int = 1) -> list[str]:
    """The comm ids of the first `count` buttons called `label` made since cell `msg_id`."""

    def made() -> list[str]:
        return [
            m["content"]["comm_id"]
            for m in from_cell(kernel, msg_id)
            if m["msg_type"] == "comm_open"
            and m["content"]["data"]["state"].get("description") == label
        ]

    kernel.wait_for(lambda _m: len(made()) >= count, timeout=60.0)
    return made()[:count]


def tool_display(kernel: Kernel, msg_id: str) -> list[Message]:
    """The messages of cell `msg_id`'s tool-call display, in order."""
    return [
        m
        for m in kernel.of(msg_id)
        if m["msg_type"] in ("display_data", "update_display_data")
        and (display_id(m) or "").endswith("-tools")
    ]


def final_tools_html(kernel: Kernel, msg_id: str) -> str:
    return str(tool_display(kernel, msg_id)[-1]["content"]["data"].get("text/html", ""))


def history(kernel: Kernel, name: str) -> list[dict[str, Any]]:
    runtime = "__import__('agentrt_jupyter.notebook').notebook.kernel_runtime()"
    text = kernel.value(
        "[(m.role, m.status, m.text, [c.name for c in m.tool_calls], "
        "[getattr(p, 'response', None) for p in m.parts]) "
        f"for m in {runtime}.history({name!r})]"
    )
    return [
        {"role": r, "status": s, "text": t, "calls": c, "responses": [x for x in p if x]}
        for r, s, t, c, p in text
    ]


def test_tools_reach_the_request_and_each_call_shows_as_a_block(
    kernel: Kernel, server: LocalServer, tmp_path: Path, tag: str
) -> None:
    target = tmp_path / "made"
    cell = kernel.run(
        f'%%agent blocks --tools touch,@data\n@@call touch {{"path": "{target}"}}\n{tag} make it'
    )
    assert cell.ok, cell.error
    assert target.exists()
    first = requests_with(server, tag)[0]["body"]
    declared = [d["name"] for t in first["tools"] for d in t["functionDeclarations"]]
    assert declared[0] == "touch" and "describe_dataframe" in declared
    shown = final_tools_html(kernel, cell.msg_id)
    assert "<details" in shown and "touch" in shown and "made " in shown
    listing = kernel.run("%agent tools blocks")
    assert listing.ok, listing.error
    assert "describe_dataframe" in json.dumps(listing.messages, default=str)
    again = kernel.run(f"%%agent blocks\n{tag} no tools asked, still declared")
    assert again.ok, again.error
    assert requests_with(server, tag)[-1]["body"].get("tools")
    cleared = kernel.run(f"%%agent blocks --tools none\n{tag} and now none")
    assert cleared.ok, cleared.error
    assert not requests_with(server, tag)[-1]["body"].get("tools")


def test_approve_click_runs_the_call_in_an_awaiting_cell(kernel: Kernel, tmp_path: Path) -> None:
    if not clicks_while_awaiting(kernel):
        pytest.skip("ipykernel < 7.4 handles clicks only after the cell ends")
    target = tmp_path / "approved"
    msg_id = kernel.submit(
        f'%%agent asker --tools touch --confirm\n@@call touch {{"path": "{target}"}}\nplease'
    )
    approve = buttons(kernel, msg_id, "Approve")[0]
    assert not target.exists()  # the call waits for the click
    # The reply's note of the call, shown while it waits, does not say it runs.
    noted = kernel.wait_for(
        lambda m: (
            m["parent_header"].get("msg_id") == msg_id and "`touch(" in json.dumps(m["content"])
        )
    )
    assert "calling" not in json.dumps(noted["content"]), noted
    kernel.click(approve)
    assert kernel.wait_idle(msg_id)["content"]["status"] == "ok"
    assert target.exists()
    assert "approved" in final_tools_html(kernel, msg_id)
    assert history(kernel, "asker")[-1]["text"].startswith("Tool results")


def test_deny_in_a_background_cell_tells_the_model_the_user_refused(
    kernel: Kernel, tmp_path: Path, server: LocalServer, tag: str
) -> None:
    target = tmp_path / "denied"
    cell = kernel.run(
        f"%%agent refuser --tools touch --confirm --background\n"
        f'@@call touch {{"path": "{target}"}}\n{tag} please'
    )
    assert cell.ok, cell.error
    deny = buttons(kernel, cell.msg_id, "Deny")[0]
    kernel.wait_for(
        lambda m: (
            m["parent_header"].get("msg_id") == cell.msg_id
            and "waiting for approval: touch(" in json.dumps(m["content"])
        )
    )
    # Saved now, the question's widget is followed by its static copy.
    asked = saved_outputs(kernel.of(cell.msg_id))
    # Before and while it waits, the call is not said to run.
    sent = json.dumps([m["content"] for m in kernel.of(cell.msg_id)], ensure_ascii=False)
    assert "running…" not in sent and "calling" not in sent, sent
    views = [i for i, o in enumerate(asked) if WIDGET_VIEW in o["data"]]
    copies = [asked[i + 1]["data"] for i in views]
    assert any("waiting for approval: touch(" in c["text/plain"] for c in copies), asked
    assert not any("buttons" in json.dumps(c) for c in copies), copies  # none where it is read
    assert all('class="agentrt-snapshot' in c.get("text/html", "") for c in copies), copies
    kernel.click(deny)
    waited = kernel.run("%agent wait refuser")
    assert waited.ok, waited.error
    assert not target.exists()
    last = requests_with(server, tag)[-1]["body"]["contents"][-1]["parts"][0]
    assert last["functionResponse"]["response"] == {"error": "the user declined this tool call"}
    assert "denied" in final_tools_html(kernel, cell.msg_id)
    after = saved_outputs(kernel.of(cell.msg_id))
    assert not [o for o in after if WIDGET_VIEW in o["data"] or "waiting for" in json.dumps(o)]


def test_approve_all_covers_the_turn_but_never_python(kernel: Kernel, tmp_path: Path) -> None:
    first, second, coded = tmp_path / "one", tmp_path / "two", tmp_path / "coded"
    code = json.dumps({"code": f"__import__('pathlib').Path({str(coded)!r}).touch()"})
    cell = kernel.run(
        "%%agent trusting --tools touch,@python --confirm --background\n"
        f'@@call touch {{"path": "{first}"}}\n@@call touch {{"path": "{second}"}}\n'
        f"@@call python {code}\nthree calls"
    )
    assert cell.ok, cell.error
    kernel.click(buttons(kernel, cell.msg_id, "Approve all in this turn")[0])
    approves = buttons(kernel, cell.msg_id, "Approve", count=2)  # the second is python's
    assert first.exists() and second.exists() and not coded.exists()
    kernel.click(approves[1])
    assert kernel.run("%agent wait trusting").ok
    assert coded.exists()
    labels = [
        m["content"]["data"]["state"].get("description")
        for m in from_cell(kernel, cell.msg_id)
        if m["msg_type"] == "comm_open"
    ]
    assert labels.count("Approve all in this turn") == 1  # not offered for @python


def test_no_answer_is_a_denial_and_python_never_runs_unasked(
    kernel: Kernel, tmp_path: Path
) -> None:
    coded = tmp_path / "never"
    code = json.dumps({"code": f"__import__('pathlib').Path({str(coded)!r}).touch()"})
    assert kernel.run("%config AgentMagics.approval_timeout = 0.3").ok
    try:
        cell = kernel.run(
            f"%%agent unanswered --tools @python --background\n@@call python {code}\nx"
        )
        assert cell.ok, cell.error
        assert kernel.run("%agent wait unanswered").ok
    finally:
        assert kernel.run("%config AgentMagics.approval_timeout = 120").ok
    assert not coded.exists()
    assert "no answer within 0.3 s: denied" in final_tools_html(kernel, cell.msg_id)
    assert "declined to run this code" in history(kernel, "unanswered")[-1]["text"]


def test_agent_approve_answers_a_background_call(kernel: Kernel, tmp_path: Path) -> None:
    target = tmp_path / "by-magic"
    cell = kernel.run(
        f"%%agent later --tools touch --confirm touch --background\n"
        f'@@call touch {{"path": "{target}"}}\ngo'
    )
    assert cell.ok, cell.error
    answered = kernel.run("%agent approve later")
    assert answered.ok, answered.error
    assert "approved: later's call touch(" in answered.stdout
    assert kernel.run("%agent wait later").ok
    assert target.exists()
    nothing = kernel.run("%agent deny later")
    assert "no tool call of 'later' is waiting" in nothing.stdout


def test_a_turn_sent_from_an_agent_panel_asks_inside_the_panel(
    kernel: Kernel, tmp_path: Path
) -> None:
    target = tmp_path / "from-panel"
    set_up = kernel.run("%%agent paneled --tools touch --confirm --background\nset up, no call")
    assert set_up.ok, set_up.error
    assert kernel.run("%agent wait paneled").ok
    before = len(kernel.messages)
    shown = kernel.run(
        "from agentrt_jupyter import AgentPanel\n"
        "from agentrt_jupyter.notebook import kernel_runtime\n"
        "panel = AgentPanel(kernel_runtime(), 'paneled')\n"
        "display(panel)\n"
        f'sent = panel.send(\'@@call touch {{"path": "{target}"}}\\nfrom the panel\')'
    )
    assert shown.ok, shown.error
    approve = kernel.wait_for(
        lambda m: (
            m["msg_type"] == "comm_open"
            and m["content"]["data"]["state"].get("description") == "Approve"
            and m in kernel.messages[before:]
        )
    )
    # The panel's status says so (written after the question joined the panel's box).
    kernel.wait_for(
        lambda m: (
            "waiting for your approval: touch(" in json.dumps(m["content"])
            and m in kernel.messages[before:]
        )
    )
    inside = kernel.value(
        "[b.description for q in panel.approvals.box.children[1:]"
        " for row in q.children[1:] for b in row.children]"
    )
    assert inside == ["Approve", "Deny"]
    assert not target.exists()
    kernel.click(approve["content"]["comm_id"])
    assert kernel.run("sent.result(10).result(30).status").ok
    assert target.exists()
    assert kernel.value("len(panel.approvals.box.children)") == 1  # the question is gone
    assert "approved" in kernel.value("panel.approvals.note.value")
    transcript = kernel.value("panel.refresh().result(10) or panel.transcript.value")
    assert "→ touch(" in transcript and "← touch:" in transcript
    assert kernel.run("panel.close()").ok


def test_cancel_during_a_sync_tool_ends_the_turn_and_keeps_history_valid(
    kernel: Kernel, server: LocalServer, tag: str
) -> None:
    clicks = clicks_while_awaiting(kernel)
    msg_id = kernel.submit(f"%%agent stuck --tools wait_released\n@@call wait_released {{}}\n{tag}")
    kernel.wait_for(
        lambda m: (
            m in tool_display(kernel, msg_id)
            and "running" in str(m["content"]["data"].get("text/plain"))
        )
    )
    if clicks:
        kernel.click(buttons(kernel, msg_id, "Cancel")[0])  # the turn's own button
    else:
        kernel.km.interrupt_kernel()
    kernel.wait_idle(msg_id)
    statuses = [m["status"] for m in history(kernel, "stuck")]
    assert statuses[-1] == "cancelled"
    assert kernel.run("release.set()").ok  # the abandoned call ends; its result is dropped
    again = kernel.run(f"%%agent stuck --tools none\n{tag} still usable?")
    assert again.ok, again.error
    assert_valid_conversation(requests_with(server, tag)[-1]["body"]["contents"])
    assert "released late" not in json.dumps(history(kernel, "stuck"))


def test_a_hanging_tool_is_bounded_by_the_tool_timeout(kernel: Kernel) -> None:
    assert kernel.run("hang = threading.Event()\ndef hangs() -> str:\n    hang.wait(60)\n").ok
    cell = kernel.run("%%agent bounded --tools hangs --tool-timeout 0.3\n@@call hangs {}\nhang")
    assert cell.ok, cell.error
    assert "did not answer within 0.3 s" in history(kernel, "bounded")[-1]["text"]
    assert kernel.run("hang.set()").ok


def test_mcp_server_tools_and_a_server_that_dies(kernel: Kernel) -> None:
    if not kernel.value("__import__('importlib.util').util.find_spec('mcp') is not None"):
        pytest.skip("the kernel's Python has no mcp package")
    added = kernel.run(f"%agent mcp add testsrv -- {sys.executable} {MCP_SERVER}")
    assert added.ok, added.error
    listed = kernel.run("%agent mcp list")
    assert "testsrv" in json.dumps(listed.messages, default=str)
    cell = kernel.run(
        "%%agent mcpuser --tools mcp:testsrv --confirm add --background\n"
        '@@call add {"a": 2, "b": 3}\nadd'
    )
    assert cell.ok, cell.error
    kernel.click(buttons(kernel, cell.msg_id, "Approve")[0])  # MCP tools ask like others
    assert kernel.run("%agent wait mcpuser").ok
    assert '"add":{"result":5}' in history(kernel, "mcpuser")[-1]["text"]
    died = kernel.run("%%agent mcpuser\n@@call die {}\nexit now")
    assert died.ok, died.error
    assert "MCP server 'testsrv'" in history(kernel, "mcpuser")[-1]["text"]
    hung = kernel.run("%%agent mcpuser --tool-timeout 1\n@@call hang {}\nblock the server")
    assert hung.ok, hung.error
    assert "did not answer within 1 s" in history(kernel, "mcpuser")[-1]["text"]
    removed = kernel.run("%agent mcp remove testsrv")
    assert removed.ok, removed.error
    gone = kernel.run("%%agent other --tools mcp:testsrv\nhi")
    assert not gone.ok and "no MCP server named 'testsrv'" in gone.stderr


def test_map_over_a_dataframe(kernel: Kernel) -> None:
    made = kernel.run("import pandas as pd\nrows = pd.DataFrame({'word': ['owl', 'cat']})")
    assert made.ok, made.error
    cell = kernel.run("%%agent --map rows --out mapped\nSay {word}")
    assert cell.ok, cell.error
    assert kernel.value("list(mapped['reply'])") == ["Echo: Say owl", "Echo: Say cat"]
    assert kernel.value("list(mapped['status'])") == ["ok", "ok"]
    # Saved, the progress widget is followed by its static copy, final once the run ended.
    outputs = saved_outputs(cell.messages)
    (view,) = [i for i, o in enumerate(outputs) if WIDGET_VIEW in o["data"]]
    copy = outputs[view + 1]["data"]
    assert 'class="agentrt-snapshot' in copy["text/html"]
    assert "2/2 rows" in copy["text/plain"] and "done" in copy["text/plain"]


def test_a_foreground_confirm_fails_clearly_where_clicks_wait(kernel: Kernel) -> None:
    if clicks_while_awaiting(kernel):
        pytest.skip("this kernel takes clicks while a cell awaits")
    cell = kernel.run("%%agent oldkernel --tools touch --confirm\nhi")
    assert not cell.ok
    assert "handles clicks only after the cell ends" in cell.stderr
