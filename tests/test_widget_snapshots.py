"""What AgentPanel and RuntimeMonitor leave in a saved notebook, in a real kernel.

Each is displayed as its widget view plus a static copy (HTML and plain text) that the
widget keeps up to date with `update_display_data` sent to the cell that displayed it.
The outputs are then saved as a frontend saves them (updates applied by display id) and
converted with nbconvert, with no kernel: the transcript and the agent table read there,
and no widget error does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from nbconvert import HTMLExporter

from .test_labcomm import LabKernel, Message, started_lab_kernel

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

SETUP = """
from agentrt_jupyter import AgentRuntime, RuntimeConfig
from agentrt_jupyter.notebook.widgets import AgentPanel, RuntimeMonitor
rt = AgentRuntime(RuntimeConfig(backend="scripted", store_path=None))
agent = rt.create_agent(name="saved")
"""
PANEL = "panel = AgentPanel(rt, agent)\npanel.refresh().result(10)\npanel"
MONITOR = "monitor = RuntimeMonitor(rt)\nmonitor.refresh().result(10)\nmonitor"
TURN = "panel.send('keep this in the saved notebook').result(10).text(timeout=10)"
REPLY = "Echo: keep this in the saved notebook"


@pytest.fixture(scope="module")
def kernel() -> Iterator[LabKernel]:
    with started_lab_kernel(SETUP) as lab:
        yield lab


def outputs_of(kernel: LabKernel, msg_id: str) -> list[Message]:
    return [
        m
        for m in kernel.messages
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "display_data"
    ]


def copy_update(
    kernel: LabKernel, display_id: str, parent: str, says: str, unless: str = "[streaming]"
) -> Message:
    """The first update of the copy `display_id`, routed to cell `parent`, that holds
    `says` and not `unless` (by default: a settled one)."""
    return kernel.wait_for(
        lambda m: (
            m["msg_type"] == "update_display_data"
            and m["content"]["transient"].get("display_id") == display_id
            and m["parent_header"].get("msg_id") == parent
            and says in m["content"]["data"]["text/html"]
            and unless not in m["content"]["data"]["text/html"]
        ),
        timeout=20,
    )


def saved_notebook(kernel: LabKernel, cells: list[tuple[str, str]]) -> Any:
    """The notebook a frontend would save: each cell's outputs, display updates applied."""
    notebook = nbformat.v4.new_notebook()
    by_display: dict[str, list[Any]] = {}
    for source, msg_id in cells:
        cell = nbformat.v4.new_code_cell(source)
        for msg in outputs_of(kernel, msg_id):
            output = nbformat.v4.new_output(
                "display_data", data=msg["content"]["data"], metadata=msg["content"]["metadata"]
            )
            cell.outputs.append(output)
            display_id = msg["content"].get("transient", {}).get("display_id")
            if display_id:
                by_display.setdefault(display_id, []).append(output)
        notebook.cells.append(cell)
    for msg in kernel.messages:
        if msg["msg_type"] == "update_display_data":
            for output in by_display.get(msg["content"]["transient"]["display_id"], []):
                output["data"] = msg["content"]["data"]
    nbformat.validate(notebook)
    return notebook


def test_a_saved_panel_and_monitor_read_without_a_kernel(kernel: LabKernel) -> None:
    shown_panel = kernel.submit(PANEL)
    kernel.finished(shown_panel)
    view, copy = outputs_of(kernel, shown_panel)
    assert WIDGET_VIEW in view["content"]["data"]
    assert "its transcript follows" in view["content"]["data"]["text/plain"]
    panel_copy = copy["content"]["transient"]["display_id"]
    assert 'class="agentrt-snapshot ' in copy["content"]["data"]["text/html"]

    shown_monitor = kernel.submit(MONITOR)
    kernel.finished(shown_monitor)
    monitor_view, monitor_copy = outputs_of(kernel, shown_monitor)
    assert WIDGET_VIEW in monitor_view["content"]["data"]
    monitor_copy_id = monitor_copy["content"]["transient"]["display_id"]

    turn = kernel.submit(TURN)
    kernel.finished(turn)
    # Sent while another cell runs, each update names the cell that displayed the widget.
    update = copy_update(kernel, panel_copy, shown_panel, REPLY)
    assert REPLY in update["content"]["data"]["text/plain"]
    total = int(kernel.run("print(agent.total_usage().total_tokens)"))
    assert total > 0
    copy_update(kernel, monitor_copy_id, shown_monitor, f">{total:,}<")

    notebook = saved_notebook(kernel, [(PANEL, shown_panel), (MONITOR, shown_monitor)])
    page, _ = HTMLExporter().from_notebook_node(notebook)
    assert REPLY in page
    assert "RuntimeMonitor" in page and "saved" in page and "idle" in page
    assert "Error displaying widget" not in page
    text = nbformat.writes(notebook)
    assert "model not found" not in text


def test_the_copy_ends_on_the_settled_turn_and_an_unchanged_panel_sends_nothing(
    kernel: LabKernel,
) -> None:
    shown = kernel.submit("quiet = AgentPanel(rt, rt.create_agent(name='quiet'))\nquiet")
    kernel.finished(shown)
    _, copy = outputs_of(kernel, shown)
    display_id = copy["content"]["transient"]["display_id"]
    kernel.run("quiet.send('@@delay 30\\none two three').result(10).text(timeout=10)")
    update = copy_update(kernel, display_id, shown, "Echo: one two three")
    settled = kernel.messages.index(update)
    kernel.run("quiet.refresh().result(10)\nquiet.refresh().result(10)")
    later = [
        m
        for m in kernel.messages[settled + 1 :]
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"].get("display_id") == display_id
    ]
    assert later == [], "refreshing an unchanged panel rewrote its copy"


def test_copies_saved_mid_turn_are_rewritten_on_shared_ticks(kernel: LabKernel) -> None:
    """Every copy is rewritten at the same moments (ticks of `SNAPSHOT_INTERVAL` on the
    monotonic clock, which this process shares with the kernel), so a notebook saved
    mid-turn shows the panel and the monitor as of one moment."""
    from agentrt_jupyter.notebook.livewidget import SNAPSHOT_INTERVAL

    cells = {
        "panel": "ticked = AgentPanel(rt, rt.create_agent(name='ticked'))\nticked",
        "monitor": "ticked_monitor = RuntimeMonitor(rt)\nticked_monitor",
    }
    copies = {}
    for name, source in cells.items():
        shown = kernel.submit(source)
        kernel.finished(shown)
        copies[outputs_of(kernel, shown)[1]["content"]["transient"]["display_id"]] = name
    since = len(kernel.messages)
    words = " ".join(f"w{i}" for i in range(140))
    # The turn starts half way between two ticks: a copy rewritten at its start is off.
    half = SNAPSHOT_INTERVAL / 2
    off_tick = f"import time\ntime.sleep(({half} - time.monotonic()) % {SNAPSHOT_INTERVAL})"
    kernel.run(f"{off_tick}\nticked.send('@@delay 40\\n{words}').result(10).text(timeout=30)")
    kernel.run("ticked.refresh().result(10)")
    updates = [
        (copies[m["content"]["transient"]["display_id"]], m)
        for m in kernel.messages[since:]
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"].get("display_id") in copies
    ]
    ended = next(
        i
        for i, (name, m) in enumerate(updates)
        if name == "panel" and "model: Echo:" in m["content"]["data"]["text/plain"]
    )
    mid_turn: dict[str, list[float]] = {"panel": [], "monitor": []}
    running = {"panel": "[streaming]", "monitor": "1 running"}
    for name, m in updates[:ended]:
        if running[name] in m["content"]["data"]["text/plain"]:
            mid_turn[name].append(m["received"] % SNAPSHOT_INTERVAL)
    assert all(len(phases) >= 2 for phases in mid_turn.values()), mid_turn
    late = {name: [p for p in phases if p > 0.6] for name, phases in mid_turn.items()}
    assert late == {"panel": [], "monitor": []}, f"rewritten off the shared ticks: {mid_turn}"
