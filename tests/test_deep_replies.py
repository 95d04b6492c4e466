"""A reply of JSON nested past the parser's recursion limit is garbage like any other:
`BackendError(status="BAD_RESPONSE")` with a short excerpt, never our catch-all."""

from __future__ import annotations

import logging

import pytest

from agentrt_jupyter import AgentRuntime, BackendError
from agentrt_jupyter.backends.base import EXCERPT_CHARS
from agentrt_jupyter.server.faults import DEEP_NESTING, GARBAGE, parse_fault
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with


def test_the_deep_garbage_shape_opens_more_brackets_than_a_parser_recurses() -> None:
    assert GARBAGE["deep"] == b"[" * DEEP_NESTING
    assert parse_fault("bad_json 200 deep").shape == "deep"
    assert parse_fault("sse_garbage 1 deep").shape == "deep"


@pytest.mark.parametrize(
    "spec",
    ["bad_json 200 deep", "bad_json 500 deep", "sse_garbage 0 deep", "sse_garbage 2 deep"],
)
def test_deeply_nested_json_is_a_bad_response_with_a_short_excerpt(
    rt: AgentRuntime,
    server: LocalServer,
    tag: str,
    spec: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = rt.create_agent()
    with (
        caplog.at_level(logging.ERROR, logger="agentrt_jupyter"),
        pytest.raises(BackendError) as caught,
    ):
        agent.chat(f"@@fault {spec}\none two three {tag}").text(timeout=30)
    error = caught.value
    assert error.status == "BAD_RESPONSE"
    assert "nested too deeply" in str(error)
    assert "[[[[" in str(error)
    assert len(str(error)) < EXCERPT_CHARS + 100
    assert "internal error" not in str(error)
    assert error.partial_text == ("Echo: one " if spec == "sse_garbage 2 deep" else "")
    assert not [r for r in caplog.records if r.name.startswith("agentrt_jupyter")]
    assert [e.status for e in agent.ledger()] == ["error"] * len(requests_with(server, tag))
    assert agent.chat(f"recovered {tag}").text(timeout=10) == f"Echo: recovered {tag}"
