"""Caller mistakes in a map call are `InvalidConfig` before anything runs (issue 17 items
18 and 20), against the local server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, InvalidConfig
from agentrt_jupyter.batch import start_map
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with

pytestmark = pytest.mark.timeout(60)


def last_id(server: LocalServer) -> int:
    logged = server.requests()
    return logged[-1]["id"] if logged else 0


def test_a_runtime_that_is_not_one_is_named_as_the_mistake(
    rt: AgentRuntime, server: LocalServer
) -> None:
    frame = pd.DataFrame({"a": [1, 2]})
    calls: list[Callable[[], Any]] = [
        lambda: frame.agentrt.map("{a}", runtime="x"),
        lambda: asyncio.run(frame.agentrt.amap("{a}", runtime=object())),
        lambda: start_map("x", frame, "{a}"),  # type: ignore[arg-type]
        lambda: rt.map(frame, "{a}", runtime=rt),
        lambda: start_map(rt, frame, "{a}", runtime="x"),
    ]
    before = last_id(server)
    for call in calls:
        with pytest.raises(InvalidConfig) as raised:
            call()
        assert raised.value.field == "runtime"
    assert last_id(server) == before  # nothing was sent


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{a!z}", "unknown conversion !z"),
        ("{a:bad}", "Invalid format specifier 'bad'"),
        ("{s:d}", "Unknown format code 'd'"),
        ("{s!r:d}", r"\{s!r:d\} cannot format the first row's str value"),
        ("{a:>{wide}}", "no column 'wide'"),
        ("{a:>{s!z}}", "unknown conversion !z"),
    ],
)
def test_a_template_mistake_that_needs_no_row_is_refused_before_anything_runs(
    rt: AgentRuntime, server: LocalServer, template: str, message: str
) -> None:
    frame = pd.DataFrame({"a": [1, 2], "s": ["x", "y"]})
    before = last_id(server)
    with pytest.raises(InvalidConfig, match=message) as raised:
        rt.map(frame, template)
    assert raised.value.field == "template"
    assert last_id(server) == before


def test_a_spec_that_only_some_row_values_miss_stays_a_row_error(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = pd.DataFrame({"v": [1, "two", None, 4]})
    result = rt.map(frame, f"{tag} {{v:d}}")

    assert list(result["status"]) == ["ok", "error", "error", "ok"]
    assert result["error"].iloc[1].startswith("cannot fill the template")
    assert len(requests_with(server, tag)) == 2
    missing_first = pd.DataFrame({"v": pd.Series([None, 5], dtype=object)})
    assert list(rt.map(missing_first, f"{tag} {{v:d}}")["status"]) == ["error", "ok"]


def test_a_column_nested_in_a_format_spec_is_read_from_each_row(rt: AgentRuntime, tag: str) -> None:
    frame = pd.DataFrame({"price": [3.14159, 2.5], "digits": [2, 0]})
    result = rt.map(frame, f"{tag} {{price:.{{digits}}f}}")
    assert list(result["reply"]) == [f"Echo: {tag} 3.14", f"Echo: {tag} 2"]


def test_batch_mode_on_a_provider_without_a_batch_api_is_refused_before_anything_runs(
    rt: AgentRuntime,
) -> None:
    frame = pd.DataFrame({"a": ["x", "y"]})
    with pytest.raises(InvalidConfig, match="ollama provider has no Batch API") as caught:
        rt.map(frame, "{a}", mode="batch", model="ollama:qwen3:4b", progress=False)
    assert caught.value.field == "mode"
