"""The runtime's promises on a bad day: quota storms, retries we can see, blocked replies,
oversized tool results, scrubbed error chains, fair streams, clear_history mid-turn and
keys that stay with their endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    BackendError,
    InvalidConfig,
    QuotaExceeded,
    ReplyBlocked,
    RuntimeClosed,
    StoreError,
    TextDelta,
    TurnCancelled,
    TurnError,
    Waiting,
)
from agentrt_jupyter.quota import QuotaRegistry, parse_quota_error
from agentrt_jupyter.server.process import LocalServer

from .conftest import assert_valid_conversation, requests_with, runtime_config


def test_many_hits_in_one_episode_wait_once_not_exponentially() -> None:
    registry = QuotaRegistry(base_backoff=1.0, jitter=0.0)
    sent = time.monotonic()
    waits = [registry.record_hit("k", None, sent_at=sent) for _ in range(100)]
    assert max(waits) <= 1.0 + 1e-6
    assert registry.state("k").episodes == 1
    assert registry.state("k").total_hits == 100


def test_the_backoff_grows_per_episode_and_success_resets_it() -> None:
    registry = QuotaRegistry(base_backoff=1.0, jitter=0.0)
    first = registry.record_hit("k", None)
    after_block = registry.state("k").blocked_until + 0.001  # a request sent after the wait
    second = registry.record_hit("k", None, sent_at=after_block, retry=True)
    assert (round(first), round(second)) == (1, 2)
    assert registry.state("k").retry_hits == 1
    registry.record_success("k")
    assert registry.state("k").successes == 1
    assert registry.record_hit("k", None) == pytest.approx(1.0)


def test_first_429s_of_a_herd_arriving_after_the_block_do_not_grow_the_backoff() -> None:
    """Agents meeting a busy key one after another (each its first 429, each sent after the
    previous block ended) are one episode: only a retry limited again doubles the wait."""
    registry = QuotaRegistry(base_backoff=1.0, jitter=0.0)
    waits = []
    for _ in range(20):
        after_block = registry.state("k").blocked_until + 0.001
        waits.append(registry.record_hit("k", None, sent_at=after_block))
    assert max(waits) <= 1.0 + 1e-6
    assert (registry.state("k").episodes, registry.state("k").retry_hits) == (1, 0)


def test_retry_info_sets_the_wait_and_waiters_add_their_own_jitter() -> None:
    registry = QuotaRegistry(jitter=0.5)
    assert registry.record_hit("k", 2.0) == pytest.approx(2.0)
    waits = {round(registry.jittered_wait("k"), 6) for _ in range(20)}
    assert len(waits) > 1
    assert all(1.9 <= w <= 3.1 for w in waits)


@pytest.mark.parametrize(
    "body",
    [
        {"error": [1]},
        {"error": {"details": [{"@type": "x.QuotaFailure", "violations": "many"}]}},
        {"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": 5}]}},
        {"error": {"details": "nope"}},
        {"error": {"details": [{"@type": "x.QuotaFailure", "violations": [1, {"quotaId": 3}]}]}},
        [1, 2, 3],
        "html",
        None,
    ],
)
def test_the_quota_parser_never_raises_on_garbage(body: Any) -> None:
    info = parse_quota_error(body, "")
    assert info.scope in ("minute", "day", "zero", "unknown")


def test_a_wait_past_quota_max_wait_fails_at_once_instead_of_hanging(
    server: LocalServer, tag: str
) -> None:
    with AgentRuntime(runtime_config(server, quota_max_wait=5.0)) as runtime:
        agent = runtime.create_agent()
        agent.chat(f"warm up {tag}").text(timeout=10)
        runtime.record_quota_hit(3600.0)
        started = time.monotonic()
        with pytest.raises(QuotaExceeded) as caught:
            agent.chat(f"blocked {tag}").text(timeout=30)
        assert time.monotonic() - started < 5.0  # failed, not waited out
        assert caught.value.scope == "minute"
        assert "quota_max_wait" in str(caught.value)
        assert requests_with(server, f"blocked {tag}") == []


def test_a_retry_after_past_the_cap_fails_the_turn_at_once(server: LocalServer, tag: str) -> None:
    with AgentRuntime(runtime_config(server, quota_max_wait=1.0)) as runtime:
        agent = runtime.create_agent()
        with pytest.raises(QuotaExceeded, match="quota_max_wait") as caught:
            agent.chat(f"@@fault 429 minute 30s\n{tag}").text(timeout=20)
        assert caught.value.scope == "minute"
        assert len(requests_with(server, tag)) == 1
        assert [e.status for e in agent.ledger()] == ["rate-limited"]


def test_each_http_attempt_is_a_ledger_row_with_its_status(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("503", "500", match=tag)
    agent = rt.create_agent()
    handle = agent.chat(f"flaky twice {tag}")
    assert handle.text(timeout=30) == f"Echo: flaky twice {tag}"
    assert [r["status"] for r in requests_with(server, tag)] == [503, 500, 200]
    assert [e.status for e in agent.ledger()] == ["retried", "retried", "ok"]
    waits = [e for e in handle if isinstance(e, Waiting)]
    assert len(waits) == 2 and all("retrying" in w.reason for w in waits)


def test_a_cancel_during_a_retry_pause_stops_the_turn(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("503", match=tag)
    agent = rt.create_agent()
    handle = agent.chat(f"cancel me while I wait {tag}")
    next(e for e in handle if isinstance(e, Waiting))
    handle.cancel()
    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    assert len(requests_with(server, tag)) == 1
    assert [e.status for e in agent.ledger()] == ["retried"]


def test_a_429_mid_stream_never_repeats_streamed_text(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@fault sse_error 2 429\ndup one two three {tag}")
    with pytest.raises(QuotaExceeded, match="middle of the reply") as caught:
        handle.text(timeout=20)
    streamed = "".join(e.text for e in handle if isinstance(e, TextDelta))
    assert streamed == caught.value.partial_text == "Echo: dup "
    assert len(requests_with(server, tag)) == 1
    model = agent.history()[-1]
    assert (model.role, model.text) == ("model", "Echo: dup ")
    agent.chat(f"next {tag}").text(timeout=10)
    assert_valid_conversation(requests_with(server, f"next {tag}")[-1]["body"]["contents"])


def test_a_safety_stop_is_a_typed_error_not_an_empty_success(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    with pytest.raises(ReplyBlocked) as caught:
        agent.chat(f"@@finish SAFETY\nsomething {tag}").text(timeout=10)
    assert caught.value.finish_reason == "SAFETY"
    assert agent.history()[-1].status == "error"


def test_a_huge_tool_result_reaches_the_model_truncated_with_a_note(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    def dump() -> str:
        """Return a lot of text."""
        return "y" * 5_000_000

    agent = rt.create_agent(tools=[dump])
    agent.chat(f"@@call dump {{}}\n{tag}").text(timeout=30)
    agent.chat(f"and after {tag}").text(timeout=30)
    last = requests_with(server, f"and after {tag}")[-1]
    sent = json.dumps(last["body"])
    assert len(sent) < 1_000_000
    assert "only the first" in sent


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@pytest.mark.parametrize("spec", ["500", "429 day", "sse_error 1 503", "drop_headers"])
def test_errors_carry_no_chained_request_holding_the_key(
    rt: AgentRuntime, tag: str, spec: str
) -> None:
    agent = rt.create_agent()
    with pytest.raises((BackendError, QuotaExceeded)) as caught:
        agent.chat(f"@@fault {spec}\n{tag}").text(timeout=30)
    key = rt.config.api_key
    assert key
    assert _chain(caught.value) == [caught.value]
    assert key not in "".join(traceback.format_exception(caught.value))
    assert key not in repr(vars(caught.value))


def test_a_new_turn_is_not_starved_by_streams_parsing_buffered_chunks(
    rt: AgentRuntime, tag: str
) -> None:
    busy = [rt.create_agent() for _ in range(8)]
    handles = [a.chat(f"@@tiny 4000\nbusy {i} {tag}") for i, a in enumerate(busy)]
    for handle in handles:  # every stream is underway
        next(e for e in handle if isinstance(e, TextDelta))
    newcomer = rt.create_agent().chat(f"@@chunks 5\nquick one {tag}")
    newcomer.text(timeout=60)
    still_streaming = sum(not h.done for h in handles)
    for handle in handles:
        handle.text(timeout=120)
    assert still_streaming >= len(handles) // 2


def test_clear_history_during_a_turn_cancels_it_first(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    agent.chat(f"before {tag}").text(timeout=10)
    running = agent.chat(f"@@fault slow 200\na long reply with many words {tag}")
    next(e for e in running if isinstance(e, TextDelta))
    agent.clear_history()
    with pytest.raises(TurnCancelled):
        running.text(timeout=10)
    assert agent.history() == [] and agent.turn_count() == 0
    agent.chat(f"fresh {tag}").text(timeout=10)
    contents = requests_with(server, f"fresh {tag}")[-1]["body"]["contents"]
    assert [c["role"] for c in contents] == ["user"]
    assert_valid_conversation(contents)


def test_a_key_is_never_sent_to_an_agents_own_other_endpoint(
    rt: AgentRuntime, server: LocalServer
) -> None:
    with pytest.raises(InvalidConfig, match="own api_key") as caught:
        rt.create_agent(name="elsewhere", base_url="http://127.0.0.1:9/")
    assert caught.value.field == "api_key"
    assert rt.config.api_key not in str(caught.value)
    same_host = rt.create_agent(base_url=server.url)  # the runtime's own endpoint: its key
    assert same_host.chat("hello").text(timeout=10) == "Echo: hello"


def test_last_response_is_the_text_and_last_message_the_message(rt: AgentRuntime) -> None:
    agent = rt.create_agent()
    assert agent.last_response() is None
    agent.chat("hi there").text(timeout=10)
    assert agent.last_response() == "Echo: hi there"
    message = agent.last_message()
    assert message is not None and message.usage is not None


def test_create_agent_refuses_an_unknown_setting_with_a_did_you_mean(rt: AgentRuntime) -> None:
    with pytest.raises(InvalidConfig, match="did you mean 'temperature'") as caught:
        rt.create_agent(temprature=0.2)
    assert caught.value.field == "temprature"


def test_a_store_fault_at_turn_start_fails_that_turn_typed_then_the_runtime_goes_on(
    server: LocalServer, tiny_tmpfs: Path, tag: str
) -> None:
    store_path = tiny_tmpfs / "store.sqlite3"
    with AgentRuntime(runtime_config(server, store_path=store_path)) as runtime:
        agent = runtime.create_agent(name="fragile")
        agent.chat(f"stored {tag}").text(timeout=10)
        filler = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # the disk fills up
            while True:
                os.write(filler, os.urandom(4096))
        os.close(filler)
        with pytest.raises(StoreError) as caught:
            agent.chat(f"after the disk filled {tag} " + "x" * 20_000).text(timeout=10)
        assert isinstance(caught.value, TurnError)
        assert not isinstance(caught.value, TurnCancelled)
        assert str(store_path) in str(caught.value)
        assert runtime.store_problem is not None
        assert agent.chat(f"unstored now {tag}").text(timeout=10) == f"Echo: unstored now {tag}"


def test_watchers_see_tokens_count_up_while_a_reply_streams(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    version, _ = rt.wait_for_change(timeout=0)
    assert rt.wait_for_change(version, timeout=0.2)[0] == version  # quiet while idle
    handle = agent.chat(f"@@fault slow 100\none two three four five six seven {tag}")
    counts: list[int] = []
    while not handle.done:
        version, infos = rt.wait_for_change(version, timeout=10)
        (info,) = [i for i in infos if i.id == agent.id]
        if not handle.done and info.turn_count:
            counts.append(info.total_usage.candidates_tokens)
    assert len(set(counts)) >= 3 and counts == sorted(counts)  # counted up mid-stream
    assert rt.agents()[0].total_usage == agent.total_usage()


def test_the_async_watch_yields_on_changes(rt: AgentRuntime) -> None:
    async def watch() -> tuple[list, list, str]:
        changes = rt.aio.watch(interval=0.01)
        first = await anext(changes)
        agent = await rt.aio.create_agent()
        second = await anext(changes)
        await changes.aclose()
        return first, second, agent.id

    first, second, created = asyncio.run(watch())
    assert first == []
    assert [i.id for i in second] == [created]


def test_retries_are_not_cut_by_a_short_idle_chunk_timeout(server: LocalServer, tag: str) -> None:
    with AgentRuntime(runtime_config(server, idle_chunk_timeout=0.4)) as runtime:
        server.push_faults("503", "503", match=tag)
        agent = runtime.create_agent()
        assert agent.chat(f"patience {tag}").text(timeout=30) == f"Echo: patience {tag}"
        assert [e.status for e in agent.ledger()] == ["retried", "retried", "ok"]


def test_a_hanging_tool_is_bounded_by_tool_timeout_and_the_turn_goes_on(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    release = threading.Event()

    def stuck() -> str:
        """Never answers in time."""
        release.wait(30)
        return "too late"

    try:
        agent = rt.create_agent(tools=[stuck], tool_timeout=0.2)
        text = agent.chat(f"@@call stuck {{}}\n{tag}").text(timeout=20)
        assert "tool_timeout" in text
        contents = requests_with(server, tag)[-1]["body"]["contents"]
        assert_valid_conversation(contents)
    finally:
        release.set()


def test_a_watch_on_another_loop_ends_with_runtime_closed_at_shutdown(server: LocalServer) -> None:
    runtime = AgentRuntime(runtime_config(server))

    async def watch_until_closed() -> BaseException:
        changes = runtime.aio.watch(interval=0.01)
        await anext(changes)
        stopper = asyncio.get_running_loop().run_in_executor(None, runtime.shutdown, 5.0)
        try:
            while True:
                await anext(changes)
        except BaseException as exc:  # what the watcher sees
            await stopper
            return exc

    assert isinstance(asyncio.run(watch_until_closed()), RuntimeClosed)
