"""Cancelling a map keeps every row whose reply arrived (issue 17 item 6), against the
local server.

The rows' replies are sent in full (finish reason included), then the server holds the
stream open (`hang_after`): a cancel in that window used to mark them `cancelled`, so
the rerun sent (and billed) them again.
"""

from __future__ import annotations

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime
from agentrt_jupyter.batch import start_map
from agentrt_jupyter.batch.live import kept_if_arrived
from agentrt_jupyter.content import FunctionCallPart, Part, TextPart
from agentrt_jupyter.conversation import ConversationMessage, Usage
from agentrt_jupyter.errors import TurnCancelled
from agentrt_jupyter.handle import TurnResult
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with

pytestmark = pytest.mark.timeout(60)

ROWS = 4
REPLY_CHUNKS = 5
"""`Echo: TAG [row N] go`: one chunk (and one token) a word."""


def wait_until_replies_arrived(rt: AgentRuntime, count: int) -> None:
    """Until `count` row agents have received every chunk of their reply (woken by the
    runtime's change signal)."""
    version = -1
    while True:
        version, agents = rt.wait_for_change(version, timeout=30)
        full = [a for a in agents if a.total_usage.candidates_tokens == REPLY_CHUNKS]
        if len(full) >= count:
            return


def test_a_cancel_keeps_the_rows_whose_reply_arrived_and_the_rerun_does_not_resend_them(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    template = f"@@fault hang_after {REPLY_CHUNKS}\n{tag} [row {{n}}] go"
    frame = pd.DataFrame({"n": range(ROWS)})
    run = start_map(rt, frame, template, concurrency=ROWS, max_concurrency=ROWS)
    wait_until_replies_arrived(rt, ROWS)

    run.cancel()
    result = run.result(timeout=30)

    sent = requests_with(server, tag)
    assert len(sent) == ROWS and all(r["chunks_sent"] == REPLY_CHUNKS for r in sent)
    assert list(result["status"]) == ["ok"] * ROWS
    assert list(result["reply"]) == [f"Echo: {tag} [row {n}] go" for n in range(ROWS)]
    assert (result["tokens_out"] == REPLY_CHUNKS).all()
    assert result.attrs["agentrt"].state == "cancelled"

    again = rt.map(frame, template)
    assert list(again["status"]) == ["cached"] * ROWS
    assert len(requests_with(server, tag)) == ROWS  # nothing sent (or billed) twice


def test_a_cancelled_reply_is_kept_only_when_it_ended_the_turn() -> None:
    cancelled = TurnResult(
        agent="row",
        turn=1,
        status="cancelled",
        text="hello",
        thoughts="",
        usage=Usage(),
        finish_reason=None,
        model="m",
        time_to_first_chunk=None,
        duration=0.1,
        tool_calls=0,
        error=TurnCancelled("cancelled"),
    )
    asked = ConversationMessage("user", (TextPart("hi"),), 1)

    def reply(*parts: Part, finish: str | None = "STOP", turn: int = 1) -> ConversationMessage:
        return ConversationMessage("model", parts, turn, status="cancelled", finish_reason=finish)

    kept = kept_if_arrived(cancelled, [asked, reply(TextPart("hello"))])
    assert (kept.status, kept.error, kept.finish_reason) == ("complete", None, "STOP")
    for history in (
        [asked],  # nothing arrived
        [asked, reply(TextPart("hel"), finish=None)],  # cut mid-reply
        [asked, reply(TextPart("hello"), finish="SAFETY")],  # blocked
        [asked, reply(FunctionCallPart("f", {}, "call-1"))],  # a tool call left to run
        [asked, reply(TextPart("hello"), turn=0)],  # an earlier turn's reply
    ):
        assert kept_if_arrived(cancelled, history) is cancelled
