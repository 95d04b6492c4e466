"""`listing`: one row per `AgentInfo` for `%agent list`, the RuntimeMonitor and the lab comm."""

from __future__ import annotations

import json

from agentrt_jupyter.conversation import Usage
from agentrt_jupyter.notebook.listing import agent_row, agents_frame, size_text
from agentrt_jupyter.notebook.monitor import cells_of
from agentrt_jupyter.runtime import AgentInfo

RUNNING = AgentInfo(
    id="a1",
    name="busy",
    model="m",
    state="running",
    turn_count=2,
    queued=1,
    current_turn=3,
    running_for=1.26,
    total_usage=Usage(prompt_tokens=1000, candidates_tokens=234, total_tokens=1234),
)
IDLE = AgentInfo("a2", "calm", "m", "idle", 0, 0, None, None, Usage())


def test_a_row_is_json_ready_and_keeps_every_field() -> None:
    row = agent_row(RUNNING)
    assert json.loads(json.dumps(row)) == row
    assert row["usage"]["total_tokens"] == 1234 and row["current_turn"] == 3


def test_the_frame_the_monitor_and_the_comm_read_the_same_row() -> None:
    frame = agents_frame([RUNNING, IDLE])
    assert list(frame["name"]) == ["busy", "calm"]
    assert list(frame["total_tokens"]) == [1234, 0]
    assert frame["running_for"][0] == 1.3 and frame["running_for"].isna()[1]
    assert str(frame["turns"].dtype) == "Int64"
    assert cells_of(RUNNING) == ("busy", "m", "running", "3", "1.3 s", "1", "1,234")
    assert cells_of(IDLE) == ("calm", "m", "idle", "", "", "0", "0")


def test_an_empty_frame_has_the_same_columns() -> None:
    assert list(agents_frame([]).columns) == list(agents_frame([IDLE]).columns)


def test_sizes_read_as_bytes_kilobytes_and_megabytes() -> None:
    assert [size_text(n) for n in (999, 12_345, 4_500_000)] == ["999 B", "12.3 kB", "4.5 MB"]
