"""`%%agent --agg DF --by COL --out R` (issue 20 item 11): the cell body is the instruction,
one row per group, in IPython's in-process shell against the scripted server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.shell_helpers import module_shell, run, usage_error

pytestmark = pytest.mark.timeout(90)

FRAME = """
import pandas as pd
complaints = pd.DataFrame({
    "region": ["north", "south", "north"],
    "text": ["late parcel", "rude driver", "lost box"],
})
"""


ip = module_shell(FRAME)


def test_an_agg_cell_answers_once_per_group(ip: Any) -> None:
    assert run(ip, "%%agent --agg complaints --by region --out summary\nSummarise") is None

    summary = ip.user_ns["summary"]
    assert list(summary.index) == ["north", "south"] and list(summary["rows"]) == [2, 1]
    assert summary.loc["north", "reply"].startswith("Echo: Summarise")
    assert "text: late parcel" in summary.loc["north", "reply"]
    assert summary.attrs["agentrt"].details["fold"] == {"north": [1], "south": [1]}


def test_a_blocking_agg_cell_runs_too(ip: Any) -> None:
    ip.run_cell_magic("agent", "--agg complaints --out everything", "Summarise all")

    everything = ip.user_ns["everything"]
    assert list(everything.index) == [0] and list(everything["rows"]) == [3]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--by region", "--by COL goes with --agg"),
        ("--agg complaints --filter complaints", "a cell runs one of them"),
        ("--agg missing", "no 'missing'"),
    ],
)
def test_agg_flag_mistakes_are_usage_errors(ip: Any, line: str, message: str) -> None:
    assert message in usage_error(ip, f"%%agent {line}\nSummarise")
