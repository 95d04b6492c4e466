"""A service that reports no usage: its counts are missing, never zeros.

Through the real `openai` SDK against the local server's Chat Completions route with
`no_usage` (no usage chunk though one is asked for, as llama.cpp's server does): the
ledger, the turn, history, the frames, the footer and a stored conversation all keep
the counts missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from agentrt_jupyter import Agent, AgentRuntime
from agentrt_jupyter.backends.base import ModelChunk, Reply
from agentrt_jupyter.content import TextPart
from agentrt_jupyter.conversation import UNREPORTED, Usage
from agentrt_jupyter.frames import (
    compact,
    history_frame,
    ledger_frame,
    read_frame,
    usage_frame,
)
from agentrt_jupyter.notebook.display import footer_line
from agentrt_jupyter.notebook.listing import agent_row, agents_frame
from agentrt_jupyter.notebook.monitor import cells_of
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config

pytest.importorskip("openai")

MODEL = "openai:gpt-4.1-mini"
TOKEN_COLUMNS = ["prompt_tokens", "candidates_tokens", "thoughts_tokens", "total_tokens"]


def openai_agent(runtime: AgentRuntime, server: LocalServer, **settings: object) -> Agent:
    return runtime.create_agent(
        model=MODEL, base_url=server.openai_base_url, api_key=server.token, **settings
    )


def test_a_stream_without_usage_gives_a_ledger_row_with_missing_counts(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = openai_agent(rt, server)
    result = agent.chat(f"@@fault no_usage\n@@reply one two three\n{tag}").result(timeout=10)

    (request,) = requests_with(server, tag)
    assert request["body"]["stream_options"] == {"include_usage": True}  # asked, not sent
    (entry,) = agent.ledger()
    assert (entry.status, entry.finish_reason, entry.provider) == ("ok", "STOP", "openai")
    assert entry.usage == UNREPORTED and entry.usage.missing
    assert result.text == "one two three"
    assert result.usage.total_tokens is None and result.usage.prompt_tokens is None
    reply = agent.history()[-1]
    assert reply.role == "model" and reply.usage == UNREPORTED
    assert "— in / — out / — thoughts" in footer_line(result)


def test_a_turn_with_one_call_missing_its_usage_sums_to_missing_not_to_the_others(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("429 minute 0.1s", "no_usage", match=tag)
    agent = openai_agent(rt, server)
    agent.chat(f"limited, then no usage {tag}").text(timeout=20)
    agent.chat(f"with usage {tag}").text(timeout=10)

    first, second, third = agent.ledger()
    assert first.status == "rate-limited" and first.usage == Usage()  # nothing billed: 0
    assert second.status == "ok" and second.usage.missing
    assert third.status == "ok" and third.usage.total_tokens and not third.usage.missing
    turns = usage_frame(agent.ledger())
    assert turns["total_tokens"].isna().tolist() == [True, False]
    assert agent.total_usage().total_tokens is None


def test_frames_hold_missing_counts_as_na_and_the_compact_view_as_a_dash(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = openai_agent(rt, server)
    agent.chat(f"@@fault no_usage\n{tag}").text(timeout=10)

    ledger = ledger_frame(agent.ledger())
    assert str(ledger["total_tokens"].dtype) == "Int64"
    assert ledger[TOKEN_COLUMNS].isna().all(axis=None)
    history = history_frame(agent)
    assert history["total_tokens"].isna().all()
    shown = compact(usage_frame(agent.ledger()), "usage").view()
    assert shown.loc[0, "prompt_tokens"] == shown.loc[0, "candidates_tokens"] == "—"
    user_row = compact(history, "history").view().loc[0]
    assert user_row["role"] == "user" and user_row["total_tokens"] == ""


def test_missing_counts_survive_a_saved_frame(
    rt: AgentRuntime, server: LocalServer, tag: str, tmp_path: Path
) -> None:
    agent = openai_agent(rt, server)
    agent.chat(f"@@fault no_usage\n{tag}").text(timeout=10)
    agent.chat(f"counted {tag}").text(timeout=10)

    for kind, frame in (("ledger", ledger_frame(agent.ledger())), ("usage", usage_frame(agent))):
        path = tmp_path / f"{kind}.csv"
        frame.to_csv(path, index=False)
        back = read_frame(path, kind)
        pd.testing.assert_frame_equal(back, frame)
        assert back["total_tokens"].isna().tolist() == [True, False]


def test_missing_counts_survive_the_store_and_old_rows_still_load(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    config = runtime_config(server, store_path=str(store_path))
    with AgentRuntime(config) as first:
        agent = first.create_agent(
            name="counted", model=MODEL, base_url=server.openai_base_url, api_key=server.token
        )
        agent.chat(f"with usage {tag}").text(timeout=10)
        agent.chat(f"@@fault no_usage\n{tag}").text(timeout=10)
        agent.disconnect()
    with AgentRuntime(config) as second:
        back = second.resume("counted")
        counted, unreported = back.ledger()
        last = back.history()[-1]

    assert counted.usage.total_tokens is not None and not counted.usage.missing
    assert unreported.usage == UNREPORTED
    assert last.usage == UNREPORTED


def test_usage_arithmetic_keeps_missing_counts_missing() -> None:
    assert Usage(1, 0, 2, 0, 0, 3) + Usage(4, 0, 5, 0, 0, 9) == Usage(5, 0, 7, 0, 0, 12)
    assert (Usage(1, 0, 2, 0, 0, 3) + UNREPORTED) == UNREPORTED
    assert Usage(prompt_tokens=7, tool_use_prompt_tokens=1).split() == (8, 0)
    assert UNREPORTED.split() == (None, None)


def test_a_reply_is_unreported_once_something_came_without_usage_and_zero_before() -> None:
    reply = Reply()
    assert reply.usage == Usage()  # nothing came: nothing to bill
    reply.add(ModelChunk((TextPart("hi"),), None))
    assert reply.usage == UNREPORTED
    reply.add(ModelChunk((), Usage(3, 0, 1, 0, 0, 4), "STOP"))
    assert reply.usage == Usage(3, 0, 1, 0, 0, 4)
    reply.reset()
    reply.add(ModelChunk((), None, "STOP"))
    assert reply.usage == UNREPORTED


def test_the_ledger_frame_keeps_counts_exact_for_reported_rows(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = openai_agent(rt, server)
    agent.chat(f"@@reply one two three\n{tag}").text(timeout=10)

    row = ledger_frame(agent.ledger()).iloc[0]
    assert (row["prompt_tokens"], row["candidates_tokens"], row["total_tokens"]) == (5, 3, 8)
    assert not pd.isna(row["total_tokens"])


def test_a_map_row_without_usage_counts_as_its_estimate_against_the_budget(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    rows = pd.DataFrame({"n": range(3)})
    result = rt.map(
        rows,
        f"@@fault no_usage\n{tag} row {{n}} " + "word " * 40,
        model=MODEL,
        base_url=server.openai_base_url,
        api_key=server.token,
        budget_tokens=100_000,
        concurrency=1,
    )

    progress = result.attrs["agentrt"]
    assert progress.state == "done"
    assert (result["tokens_in"] > 0).all() and (result["tokens_out"] > 0).all()
    assert progress.tokens_in == int(result["tokens_in"].sum()) > 0


def test_the_agents_list_and_the_monitor_show_a_missing_total_as_missing(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = openai_agent(rt, server)
    agent.chat(f"@@fault no_usage\n{tag}").text(timeout=10)

    [info] = rt.agents()
    assert "total_tokens" not in agent_row(info)["usage"]  # left out, never 0
    assert cells_of(info)[-1] == "—"
    assert agents_frame([info])["total_tokens"].isna().all()


def test_a_reply_recorded_without_usage_still_replays_as_replayed(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = openai_agent(rt, server, reply_cache=True)
    prompt = f"@@fault no_usage\n@@reply cached words\n{tag}"
    first = agent.chat(prompt).result(timeout=10)
    agent.clear_history()
    again = agent.chat(prompt).result(timeout=10)

    assert len(requests_with(server, tag)) == 1  # the second turn sent nothing
    assert (first.replayed, again.replayed) == (False, True)
    assert (again.text, again.saved_tokens) == ("cached words", 0)
    assert footer_line(again).endswith("replayed from the reply cache")
