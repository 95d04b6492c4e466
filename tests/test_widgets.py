"""AgentPanel and RuntimeMonitor driven in-process (no frontend) against the scripted server.

Buttons are clicked with `click()`; tests wait on trait observers and turn handles, never
on sleeps.
"""

from __future__ import annotations

import html
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentrt_jupyter import Agent, AgentRuntime, AgentShutDown, TurnCancelled
from agentrt_jupyter.notebook.widgets import AgentPanel, RuntimeMonitor
from agentrt_jupyter.server.process import LocalServer

from .conftest import wait_for_tagged


def wait_until(
    widget: Any, name: str, predicate: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    """Wait (on trait notifications) until `predicate(widget.<name>)` holds; return the value."""
    matched = threading.Event()

    def check(_change: object = None) -> None:
        if predicate(getattr(widget, name)):
            matched.set()

    widget.observe(check, names=name)
    try:
        check()
        assert matched.wait(timeout), f"{name} never matched; last value: {getattr(widget, name)!r}"
    finally:
        widget.unobserve(check, names=name)
    return getattr(widget, name)


@pytest.fixture
def agent(rt: AgentRuntime) -> Agent:
    return rt.create_agent(name="panelist")


@pytest.fixture
def panel(rt: AgentRuntime, agent: Agent) -> Iterator[AgentPanel]:
    widget = AgentPanel(rt, agent)
    yield widget
    widget.close()


def send(panel: AgentPanel, text: str) -> None:
    panel.input.value = text
    panel.send_button.click()


def wait_ended(panel: AgentPanel, turns: int = 1) -> None:
    """Until the panel displays the end of its `turns`-th turn."""
    wait_until(panel, "ended_turns", lambda ended: ended >= turns)


def test_send_streams_the_reply_into_the_transcript(panel: AgentPanel, tag: str) -> None:
    seen: list[str] = []
    panel.streaming.observe(lambda change: seen.append(change["new"]), names="value")
    send(panel, f"@@delay 60\nlet us stream six words {tag}")
    wait_ended(panel)
    reply = f"Echo: let us stream six words {tag}"
    assert panel.last_handle is not None
    assert panel.last_handle.text() == reply
    assert html.escape(reply) in panel.transcript.value
    assert panel.transcript.value.count(html.escape(reply)) == 1
    streamed = [v for v in seen if "[streaming]" in v and "Echo:" in v]
    assert streamed, "no partial reply was shown while streaming"
    assert panel.streaming.value == ""
    assert panel.input.value == ""
    assert "idle" in panel.status.value


def test_cancel_stops_a_hanging_turn_and_keeps_the_partial(
    panel: AgentPanel, agent: Agent, tag: str
) -> None:
    send(panel, f"@@fault hang_after 2\none two three four {tag}")
    wait_until(panel.streaming, "value", lambda v: "Echo: one" in v)
    wait_until(panel.cancel_button, "disabled", lambda disabled: not disabled)
    panel.cancel_button.click()
    handle = panel.last_handle
    assert handle is not None
    with pytest.raises(TurnCancelled) as cancelled:
        handle.result(timeout=10)
    wait_until(panel.status, "value", lambda v: "cancelled" in v)
    partial = cancelled.value.partial_text
    assert partial.startswith("Echo: one")
    last = agent.history()[-1]
    assert (last.role, last.status, last.text) == ("model", "cancelled", partial)
    transcript = wait_until(panel.transcript, "value", lambda v: "[cancelled]" in v)
    assert html.escape(partial) in transcript
    assert agent.chat(f"still usable {tag}").text(timeout=10) == f"Echo: still usable {tag}"


def test_shutdown_shuts_the_agent_down(panel: AgentPanel, rt: AgentRuntime, agent: Agent) -> None:
    panel.shutdown_button.click()
    wait_until(panel.status, "value", lambda v: "shut down" in v)
    assert panel.send_button.disabled and panel.shutdown_button.disabled
    (info,) = [i for i in rt.agents() if i.id == agent.id]
    assert info.state == "shutdown"
    with pytest.raises(AgentShutDown):
        agent.chat("hello")
    with pytest.raises(AgentShutDown):
        panel.send("hello").result(10)
    with pytest.raises(ValueError, match="nothing to send"):
        panel.send("  ").result(10)


def test_usage_line_and_history_tab_follow_each_turn(
    panel: AgentPanel, agent: Agent, tag: str
) -> None:
    assert panel.tabs.titles == ("Chat", "History")
    assert panel.tabs.children[1] is panel.history
    send(panel, f"first {tag}")
    wait_ended(panel)
    total = agent.total_usage().total_tokens
    assert total > 0
    usage = wait_until(panel.usage, "value", lambda v: f"{total:,} tokens" in v)
    assert "1 turn ·" in usage
    table = panel.history.value
    assert "<table" in table and f"Echo: first {tag}" in table

    send(panel, f"second {tag}")
    wait_ended(panel, 2)
    total = agent.total_usage().total_tokens
    assert "2 turns" in wait_until(panel.usage, "value", lambda v: f"{total:,} tokens" in v)
    assert f"Echo: second {tag}" in wait_until(panel.history, "value", lambda v: "second" in v)


def test_queued_messages_each_show_once_in_order(panel: AgentPanel, tag: str) -> None:
    first = panel.send(f"@@delay 30\none {tag}")
    second = panel.send(f"two {tag}")
    assert second.result(10).text(timeout=10) == f"Echo: two {tag}"
    assert first.result(10).outcome() is not None
    wait_ended(panel, 2)
    replies = [f"Echo: one {tag}", f"Echo: two {tag}"]
    transcript = panel.transcript.value
    assert "[streaming]" not in transcript and "[queued]" not in transcript
    assert [transcript.count(r) for r in replies] == [1, 1]
    assert transcript.index(replies[0]) < transcript.index(replies[1])


def test_transcript_updates_are_coalesced_and_end_exact(panel: AgentPanel, tag: str) -> None:
    stamps: list[float] = []
    settled: list[float] = []
    panel.streaming.observe(lambda _: stamps.append(time.monotonic()), names="value")
    panel.transcript.observe(lambda _: settled.append(time.monotonic()), names="value")
    started = time.monotonic()
    send(panel, f"@@tiny 2000\n@@delay 1\n{tag}")
    wait_ended(panel)
    duration = time.monotonic() - started
    assert 2 <= len(stamps) <= 20 * (duration + 1), (len(stamps), duration)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert min(gaps, default=1.0) >= 0.05
    assert len(settled) == 1
    final = panel.transcript.value
    assert "x" * 2000 in final and "x" * 2001 not in final
    assert panel.streaming.value == ""


def test_panel_accepts_an_agent_name_and_reprs_cheaply(rt: AgentRuntime, agent: Agent) -> None:
    widget = AgentPanel(rt, agent.name)
    try:
        assert widget.agent.id == agent.id
        assert repr(widget) == "<AgentPanel agent='panelist' live=0>"
        widget.refresh().result(10)
    finally:
        widget.close()
    widget.close()


def test_close_stops_the_writer_and_leaves_turns_running(
    rt: AgentRuntime, agent: Agent, tag: str
) -> None:
    widget = AgentPanel(rt, agent)
    send(widget, f"@@delay 50\nkeep going after close {tag}")
    wait_until(widget.streaming, "value", lambda v: "Echo:" in v)
    handle = widget.last_handle
    widget.close()
    assert widget._writer.stopped
    assert handle is not None
    assert handle.text(timeout=10) == f"Echo: keep going after close {tag}"


def cell(monitor: RuntimeMonitor, agent: Agent, column: str) -> Any:
    return monitor.rows[agent.id].cells[RuntimeMonitor.COLUMNS.index(column)]


def test_monitor_lists_agents_and_its_buttons_cancel_and_shut_down(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    busy = rt.create_agent(name="busy")
    calm = rt.create_agent(name="calm")
    monitor = RuntimeMonitor(rt)
    try:
        monitor.refresh().result(10)
        assert set(monitor.rows) == {busy.id, calm.id}
        assert cell(monitor, calm, "agent").value == "calm"
        assert cell(monitor, calm, "state").value == "idle"
        assert repr(monitor) == "<RuntimeMonitor agents=2>"

        handle = busy.chat(f"@@fault hang\n{tag}")
        wait_for_tagged(server, tag)
        monitor.refresh()
        wait_until(cell(monitor, busy, "state"), "value", lambda v: v == "running")
        assert cell(monitor, busy, "turn").value == "1"
        first = wait_until(cell(monitor, busy, "elapsed"), "value", bool)
        wait_until(cell(monitor, busy, "elapsed"), "value", lambda v: v != first)

        monitor.rows[busy.id].cancel.click()
        with pytest.raises(TurnCancelled):
            handle.result(timeout=10)
        wait_until(cell(monitor, busy, "state"), "value", lambda v: v == "idle")
        wait_until(monitor.rows[busy.id].cancel, "disabled", bool)

        monitor.rows[calm.id].shutdown.click()
        wait_until(cell(monitor, calm, "state"), "value", lambda v: v == "shutdown")
        assert monitor.rows[calm.id].shutdown.disabled
        with pytest.raises(AgentShutDown):
            calm.chat("hello")
        assert busy.chat(f"after {tag}").text(timeout=10) == f"Echo: after {tag}"
        total = busy.total_usage().total_tokens
        monitor.refresh().result(10)
        assert cell(monitor, busy, "tokens").value == f"{total:,}"
    finally:
        monitor.close()
    assert monitor._writer.stopped


def test_monitor_drops_rows_of_deleted_agents(rt: AgentRuntime) -> None:
    keep = rt.create_agent(name="keep")
    gone = rt.create_agent(name="gone")
    monitor = RuntimeMonitor(rt)
    try:
        monitor.refresh().result(10)
        assert set(monitor.rows) == {keep.id, gone.id}
        gone.delete()
        monitor.refresh().result(10)
        assert set(monitor.rows) == {keep.id}
        assert len(monitor.grid.children) == 2 * (len(RuntimeMonitor.COLUMNS) + 2)
    finally:
        monitor.close()


def tokens_in(text: str) -> int:
    """The total token count of a usage line or a monitor cell ("1,234 tokens", "1,234")."""
    match = re.search(r"([\d,]+)(?: tokens)?", text.replace("<small>", ""))
    assert match is not None, text
    return int(match.group(1).replace(",", ""))


def test_panel_usage_counts_up_while_the_reply_streams(panel: AgentPanel, tag: str) -> None:
    seen: list[tuple[int, bool]] = []
    handles: list[Any] = []

    def record(change: dict[str, Any]) -> None:
        usage = re.search(r"· ([\d,]+) tokens", change["new"])
        if usage is not None and handles:
            seen.append((int(usage.group(1).replace(",", "")), handles[0].done))

    panel.usage.observe(record, names="value")
    handle = panel.send(f"@@delay 40\n{' '.join(['word'] * 30)} {tag}").result(10)
    handles.append(handle)
    handle.text(timeout=20)
    wait_ended(panel)
    final = handle.usage.total_tokens
    while_streaming = sorted({tokens for tokens, done in seen if tokens and not done})
    assert len(while_streaming) >= 2, seen
    assert while_streaming[-1] <= final


def test_panel_shows_turns_sent_elsewhere_when_they_end(
    panel: AgentPanel, agent: Agent, tag: str
) -> None:
    wait_until(panel.usage, "value", lambda v: "0 turns" in v)
    assert agent.chat(f"from another cell {tag}").text(timeout=10)
    wait_until(panel.transcript, "value", lambda v: f"Echo: from another cell {tag}" in v)
    assert "1 turn ·" in wait_until(panel.usage, "value", lambda v: "1 turn ·" in v)


def test_a_turn_sent_elsewhere_streams_in_the_panel(
    panel: AgentPanel, agent: Agent, tag: str
) -> None:
    wait_until(panel.usage, "value", lambda v: "0 turns" in v)
    words = [f"w{i}" for i in range(30)]
    streamed: list[tuple[str, bool]] = []
    handles: list[Any] = []

    def record(change: dict[str, Any]) -> None:
        if handles:
            streamed.append((change["new"], handles[0].done))

    panel.streaming.observe(record, names="value")
    handle = agent.chat(f"@@delay 40\n{' '.join(words)} {tag}")
    handles.append(handle)
    text = handle.text(timeout=20)
    wait_until(panel.transcript, "value", lambda v: tag in v and "w29" in v)
    wait_until(panel.streaming, "value", lambda v: v == "")
    replies = [v.partition("<b>model</b>") for v, done in streamed if not done]
    partial = [(prompt, reply) for prompt, _, reply in replies if "w3 " in reply]
    partial = [(prompt, reply) for prompt, reply in partial if "w29" not in reply]
    assert partial, f"no part of the reply showed while it streamed: {streamed[-3:]}"
    prompt, reply = partial[0]
    assert tag in prompt and "streaming" in reply
    assert panel.transcript.value.count("w29") == 1 + text.count("w29")
    assert "running (a turn sent elsewhere)" not in panel.status.value


def test_after_shutdown_the_panel_reattaches_to_a_new_agent_of_its_name(
    panel: AgentPanel, rt: AgentRuntime, agent: Agent, tag: str
) -> None:
    send(panel, f"before {tag}")
    wait_ended(panel)
    panel.shutdown_button.click()
    wait_until(panel.status, "value", lambda v: "shut down" in v)
    assert panel.send_button.disabled

    again = rt.create_agent(name=agent.name)
    wait_until(panel.send_button, "disabled", lambda disabled: not disabled)
    assert panel.agent.id == again.id != agent.id
    assert "re-attached" in panel.status.value
    assert not panel.shutdown_button.disabled
    send(panel, f"after {tag}")
    wait_ended(panel, 2)
    assert panel.last_handle is not None
    assert panel.last_handle.text(timeout=10) == f"Echo: after {tag}"
    assert again.history()[-1].text == f"Echo: after {tag}"
    transcript = wait_until(panel.transcript, "value", lambda v: "after" in v)
    assert f"before {tag}" not in transcript, "the new agent's transcript starts afresh"


def test_a_deleted_agent_leaves_the_panel_disabled(panel: AgentPanel, agent: Agent) -> None:
    panel.refresh().result(10)
    agent.delete()
    wait_until(panel.status, "value", lambda v: "deleted" in v)
    assert panel.send_button.disabled and panel.shutdown_button.disabled


def test_the_transcript_box_is_anchored_at_its_bottom(panel: AgentPanel) -> None:
    """Following the stream is CSS (the browser test scrolls it): the box holding the
    transcript is a reversed column, so its scroll position is kept from the bottom."""
    layout = panel.conversation.layout
    assert (layout.flex_flow, layout.overflow, layout.max_height) == (
        "column-reverse",
        "auto",
        "420px",
    )
    (inner,) = panel.conversation.children
    assert inner.children == (panel.transcript, panel.streaming)


def test_monitor_tokens_count_up_while_a_reply_streams(
    rt: AgentRuntime, agent: Agent, tag: str
) -> None:
    monitor = RuntimeMonitor(rt)
    try:
        monitor.refresh().result(10)
        seen: list[tuple[int, bool]] = []
        handles: list[Any] = []

        def record(change: dict[str, Any]) -> None:
            if handles:
                seen.append((tokens_in(change["new"]), handles[0].done))

        cell(monitor, agent, "tokens").observe(record, names="value")
        handle = agent.chat(f"@@delay 40\n{' '.join(['word'] * 30)} {tag}")
        handles.append(handle)
        handle.text(timeout=20)
        final = agent.total_usage().total_tokens
        wait_until(cell(monitor, agent, "tokens"), "value", lambda v: tokens_in(v) == final)
        while_streaming = sorted({tokens for tokens, done in seen if tokens and not done})
        assert len(while_streaming) >= 2, seen
        assert while_streaming[-1] <= final
    finally:
        monitor.close()


def test_monitor_renders_nothing_while_all_agents_are_idle(rt: AgentRuntime, agent: Agent) -> None:
    monitor = RuntimeMonitor(rt)
    try:
        monitor.refresh().result(10)
        renders = monitor._writer.renders
        version, _ = rt.wait_for_change(timeout=0)
        # An observation window with nothing happening (the old monitor looked every 1 s).
        later, _ = rt.wait_for_change(version, timeout=1.5)
        assert later == version, "something changed in the window"
        assert monitor._writer.renders == renders, "the monitor rendered with nothing changed"
        agent.chat("wake up").text(timeout=10)
        wait_until(cell(monitor, agent, "turn"), "value", lambda v: v == "")
        wait_until(cell(monitor, agent, "tokens"), "value", lambda v: tokens_in(v) > 0)
        assert monitor._writer.renders > renders
    finally:
        monitor.close()


def test_a_turn_not_numbered_yet_reads_starting_in_the_monitor() -> None:
    from agentrt_jupyter.conversation import Usage
    from agentrt_jupyter.notebook.monitor import cells_of
    from agentrt_jupyter.registry import AgentInfo

    def info(turn: int | None) -> AgentInfo:
        state = "idle" if turn is None else "running"
        return AgentInfo("id", "a", "m", state, 2, 0, turn, None if turn is None else 0.1, Usage())

    columns = RuntimeMonitor.COLUMNS
    assert cells_of(info(0))[columns.index("turn")] == "starting"
    assert cells_of(info(3))[columns.index("turn")] == "3"
    assert cells_of(info(None))[columns.index("turn")] == ""
