"""Cancel at any moment: the turn ends cancelled at once, the agent goes on, nothing leaks.

Targeted tests cancel at each named moment, synchronised exactly (the server saw the
request, the tool started, the 429 wait began); the fuzz cancels 1,000+ times at random
moments across 50+ agents and then reconciles the server's log, the ledger and history,
and checks that shutdown leaves no task, thread or socket behind. All of it runs on
each provider (Gemini, OpenAI, Anthropic), through its own SDK, on the local server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentrt_jupyter import (
    Agent,
    AgentRuntime,
    ChatHandle,
    LedgerEntry,
    TextDelta,
    TurnCancelled,
    TurnEnd,
    TurnResult,
    Waiting,
)
from agentrt_jupyter.server.process import LocalServer

from .conftest import wait_for_tagged
from .reliability_helpers import (
    Provider,
    ServerWitness,
    assert_valid_request,
    connections_to,
    echo_prefix,
    loop_tasks,
    prompt_of,
    runtime_threads,
    server_port,
    settle,
    started_runtime,
    suite_figures,
    threads_left,
)

SEED = 20261201
CANCEL_TIMEOUT = 10.0
"""How long a cancelled turn may take to end: generous, and far below what a lost cancel
costs (a hung stream's 20 s idle timeout, a tool blocking 30 s, a 429's retry)."""
WORDS = "one two three four five six seven eight"
FOLLOW_UP_SHARE = 0.25
"""After this share of the fuzz's cancels (and after each agent's last) a plain turn must
work; after the others the next cancel's turn is the next turn, and every request of the
fuzz must be a valid conversation."""
UNRETRIEVED = ("Task exception was never retrieved", "Task was destroyed but it is pending")


class Gates:
    """Per-call events for the blocking tools: `started` set by the tool, `release` by
    the test (the sync tool waits on it; the async one waits on an event nobody sets)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, tuple[threading.Event, threading.Event]] = {}

    def get(self, key: str) -> tuple[threading.Event, threading.Event]:
        with self._lock:
            return self._gates.setdefault(key, (threading.Event(), threading.Event()))

    def release_all(self) -> None:
        with self._lock:
            for _, release in self._gates.values():
                release.set()

    def tools(self) -> list[Callable[..., Any]]:
        gates = self

        def block_sync(key: str) -> str:
            """Block this worker thread until the test releases the call."""
            started, release = gates.get(key)
            started.set()
            release.wait(30)
            return "released"

        async def block_async(key: str) -> str:
            """Wait on the loop for an event nobody sets."""
            gates.get(key)[0].set()
            await asyncio.Event().wait()
            return "never"

        return [block_sync, block_async]


def cancel_now(via: str, agent: Agent, handle: ChatHandle) -> bool | None:
    """Cancel the agent's turn through `rt.cancel(agent)` or `handle.cancel()`."""
    if via == "runtime":
        return agent.runtime.cancel(agent)
    handle.cancel()
    return None


def expect_cancelled(handle: ChatHandle, what: str) -> TurnCancelled:
    outcome = settle(handle, CANCEL_TIMEOUT)
    assert isinstance(outcome, TurnCancelled), f"{what}: the cancel was lost, got {outcome!r}"
    return outcome


def first_texts(handle: ChatHandle, count: int, timeout: float = 20.0) -> str:
    """Wait until `count` text chunks arrived; the text so far."""
    texts: list[str] = []
    for event in handle.events(timeout=timeout):
        if isinstance(event, TextDelta):
            texts.append(event.text)
            if len(texts) == count:
                return "".join(texts)
        assert not isinstance(event, TurnEnd), f"the turn ended before {count} chunks: {event}"
    raise AssertionError("no more events")


def wait_for_event(handle: ChatHandle, kind: type, timeout: float = 20.0) -> Any:
    for event in handle.events(timeout=timeout):
        if isinstance(event, kind):
            return event
        assert not isinstance(event, TurnEnd), f"the turn ended before a {kind.__name__}"
    raise AssertionError("no more events")


def next_turn_works(agent: Agent, marker: str, timeout: float = 30.0) -> None:
    prompt = f"after {marker}"
    outcome = settle(agent.chat(prompt), timeout)
    assert isinstance(outcome, TurnResult), f"the turn after a cancel failed: {outcome!r}"
    assert outcome.text == f"Echo: {prompt}"


def rows_for(runtime: AgentRuntime, agent: Agent, marker: str) -> list[LedgerEntry]:
    """The ledger rows of the turn whose prompt contains `marker`."""
    turns = {m.turn for m in runtime.history(agent) if m.role == "user" and marker in m.text}
    return [e for e in runtime.agent_ledger(agent) if e.turn in turns]


MOMENTS = ["right after chat", "before headers", "mid-stream", "sync tool", "async tool"]


@pytest.mark.parametrize("via", ["runtime", "handle"])
@pytest.mark.parametrize("moment", MOMENTS)
def test_cancel_at_a_named_moment_ends_the_turn_and_the_agent_goes_on(
    server: LocalServer, tag: str, provider: Provider, moment: str, via: str
) -> None:
    server.reset()  # a short log, so waiting for this test's request reads little
    witness = ServerWitness(server)
    gates = Gates()
    with started_runtime(provider.config()) as runtime:
        agent = runtime.create_agent(tools=gates.tools())
        marker = f"{tag}c"
        partial = ""
        if moment == "right after chat":
            handle = agent.chat(f"@@delay 20\n@@chunks 20\n{WORDS} {marker}")
        elif moment == "before headers":
            handle = agent.chat(f"@@fault hang_headers\n{WORDS} {marker}")
            wait_for_tagged(server, marker)
        elif moment == "mid-stream":
            handle = agent.chat(f"@@fault hang_after 3\n{WORDS} {marker}")
            partial = first_texts(handle, 3)
        else:
            tool = "block_sync" if moment == "sync tool" else "block_async"
            handle = agent.chat(f'@@call {tool} {{"key": "{marker}"}}\n{marker}')
            assert gates.get(marker)[0].wait(20), "the tool never started"
        found = cancel_now(via, agent, handle)
        assert found in (True, None), f"cancel() found no turn to stop at {moment!r}"
        cancelled = expect_cancelled(handle, moment)
        if moment == "right after chat":
            assert f"Echo: {WORDS} {marker}".startswith(cancelled.partial_text)
        else:
            assert cancelled.partial_text == partial
        gates.release_all()

        history = agent.history()
        ledger = agent.ledger()
        requests = witness.requests()
        if moment == "right after chat":
            assert len(requests) <= len(ledger) <= 1
            assert all(e.status == "cancelled" for e in ledger), ledger
        else:
            assert len(requests) == len(ledger) == 1, (requests, ledger)
            assert ledger[0].status == ("ok" if "tool" in moment else "cancelled")
        if moment == "mid-stream":
            model = history[-1]
            assert (model.role, model.status, model.text) == ("model", "cancelled", partial)
        if "tool" in moment:
            assert [m.role for m in history] == ["user", "model", "user"]
            assert history[-1].status == "cancelled"
        next_turn_works(agent, marker)
        assert_valid_request(witness.requests()[-1])


@pytest.mark.parametrize("via", ["runtime", "handle"])
def test_cancel_during_a_429_wait_ends_the_turn_before_the_retry(
    server: LocalServer, tag: str, provider: Provider, via: str
) -> None:
    witness = ServerWitness(server)
    with started_runtime(provider.config()) as runtime:
        agent = runtime.create_agent()
        server.push_faults("429 minute 2s", match=f"{tag}c")
        handle = agent.chat(f"limited {tag}c")
        wait_for_event(handle, Waiting)
        assert cancel_now(via, agent, handle) in (True, None)
        expect_cancelled(handle, "429 wait")
        assert [e.status for e in agent.ledger()] == ["rate-limited"]
        assert len(witness.requests()) == 1, "the retry was sent although the turn was cancelled"
        next_turn_works(agent, tag)


def test_cancelling_a_queued_turn_skips_it_and_the_running_one_goes_on(
    server: LocalServer, tag: str, provider: Provider
) -> None:
    witness = ServerWitness(server)
    with started_runtime(provider.config()) as runtime:
        check_queued_cancel(runtime, witness, tag)


def check_queued_cancel(runtime: AgentRuntime, witness: ServerWitness, tag: str) -> None:
    agent = runtime.create_agent()
    running = agent.chat(f"@@delay 20\n@@chunks 10\n{WORDS} {tag}r")
    first_texts(running, 1)
    queued = agent.chat(f"queued {tag}q")
    queued.cancel()
    expect_cancelled(queued, "queued turn")
    outcome = settle(running, 20.0)
    assert isinstance(outcome, TurnResult), outcome
    assert outcome.text == f"Echo: {WORDS} {tag}r"
    users = [m.text for m in agent.history() if m.role == "user"]
    assert users == [f"@@delay 20\n@@chunks 10\n{WORDS} {tag}r"]
    assert len(witness.requests()) == len(agent.ledger()) == 1


def test_a_thousand_cancels_right_after_chat_are_never_lost(
    server: LocalServer, tag: str, provider: Provider
) -> None:
    """`cancel()` at once after `chat()` returns True and the turn never runs to its end."""
    agents_count, rounds = 50, 20
    witness = ServerWitness(server)
    with (
        suite_figures("cancel right after chat", provider.name) as figures,
        started_runtime(provider.config()) as runtime,
    ):
        crowd = [runtime.create_agent() for _ in range(agents_count)]

        def trials(index: int) -> int:
            agent = crowd[index]
            for round_ in range(rounds):
                handle = agent.chat(f"@@delay 20\n@@chunks 20\n{WORDS} {tag}a{index}t{round_}")
                assert agent.cancel() is True, f"agent {index} round {round_}: cancel missed"
                expect_cancelled(handle, f"agent {index} round {round_}")
            next_turn_works(agent, f"{tag}a{index}z")
            return rounds

        with concurrent.futures.ThreadPoolExecutor(agents_count) as pool:
            figures.trials = sum(pool.map(trials, range(agents_count)))
        grouped = witness.by_marker(re.escape(tag) + r"(a\d+)[tz]")
        for index, agent in enumerate(crowd):
            statuses = [e.status for e in agent.ledger()]
            assert statuses[-1:] == ["ok"], statuses
            assert set(statuses[:-1]) <= {"cancelled"}, statuses
            assert len(grouped.get(f"a{index}", [])) <= len(statuses)
        figures.passed = figures.trials


@dataclass
class Trial:
    """One cancel of the fuzz: where it struck and what the turn became."""

    kind: str
    via: str
    marker: str
    strict: bool = True
    """False where the cancel may land while the request is still on its way to the
    server (then a "cancelled" ledger row may have no server request)."""
    handle: ChatHandle | None = None
    statuses: list[str] = field(default_factory=list)


FUZZ_KINDS = ("right after chat", "queued", "before headers", "mid-stream", "sync tool", "async")


def run_trial(
    rng: random.Random, agent: Agent, gates: Gates, marker: str, kind: str, via: str
) -> list[Trial]:
    """One random-moment cancel (two for "queued"); every cancelled turn must end cancelled."""
    trial = Trial(kind, via, f"{marker}c")
    if kind == "queued":
        blocker = agent.chat(f"@@fault hang_after 1\nblocker {marker}b")
        first_texts(blocker, 1)
        handle = agent.chat(f"queued {marker}c")
        handle.cancel()
        expect_cancelled(handle, f"{marker} queued")
        assert handle.turn == 0, "a cancelled queued turn still ran"
        trial.handle = handle
        held = Trial("queued blocker", via, f"{marker}b", handle=blocker, statuses=["cancelled"])
        assert cancel_now(via, agent, blocker) in (True, None)
        assert expect_cancelled(blocker, f"{marker} blocker").partial_text == "Echo: "
        return [trial, held]
    if kind == "right after chat":
        handle = agent.chat(f"@@delay 20\n@@chunks 20\n{WORDS} {marker}c")
        trial.strict = False
    elif kind == "before headers":
        handle = agent.chat(f"@@fault hang_headers\n{WORDS} {marker}c")
        time.sleep(rng.uniform(0.0, 0.03))  # a random moment, not a synchronisation
        trial.strict = False
    elif kind == "mid-stream":
        stop = rng.randint(1, 6)
        handle = agent.chat(f"@@fault hang_after {stop}\n{WORDS} {marker}c")
        first_texts(handle, rng.randint(1, stop))
        trial.statuses = ["cancelled"]
    else:
        tool = "block_sync" if kind == "sync tool" else "block_async"
        handle = agent.chat(f'@@call {tool} {{"key": "{marker}"}}\n{marker}c')
        assert gates.get(marker)[0].wait(20), f"{marker}: the tool never started"
        trial.statuses = ["ok"]
    trial.handle = handle
    found = cancel_now(via, agent, handle)
    assert found in (True, None), f"{marker} {kind}: cancel() found no turn to stop"
    cancelled = expect_cancelled(handle, f"{marker} {kind}")
    if kind == "mid-stream":
        user_text = f"{WORDS} {marker}c"
        prefixes = [echo_prefix(user_text, n) for n in range(1, 7)]
        assert cancelled.partial_text in prefixes, cancelled.partial_text
    gates.get(marker)[1].set()
    return [trial]


def check_fuzz_agent(
    runtime: AgentRuntime,
    agent: Agent,
    trials: list[Trial],
    requests: list[dict[str, Any]],
    follow_ups: list[str],
) -> None:
    """Server requests = ledger rows per turn, one user message per started turn."""
    where = f"agent {agent.id}"
    by_prompt: dict[str, int] = {}
    for record in requests:
        assert_valid_request(record)
        key = prompt_of(record).split()[-1]
        by_prompt[key] = by_prompt.get(key, 0) + 1
    history = runtime.history(agent)
    prompts_by_turn = {m.turn: m.text for m in history if m.role == "user" and m.text}
    rows: dict[str, list[str]] = {}
    for entry in runtime.agent_ledger(agent):
        prompt = prompts_by_turn[entry.turn]
        key = prompt.split()[-1]
        rows.setdefault(key, []).append(entry.status)
    for trial in trials:
        statuses = rows.get(trial.marker, [])
        sent = by_prompt.get(trial.marker, 0)
        if trial.strict:
            assert statuses == trial.statuses, f"{where} {trial.kind} {trial.marker}: {statuses}"
            assert sent == len(statuses), f"{where} {trial.marker}: {sent} requests, {statuses}"
        else:
            assert statuses in ([], ["cancelled"]), f"{where} {trial.marker}: {statuses}"
            assert sent <= len(statuses), f"{where} {trial.marker}: {sent} requests, {statuses}"
    for marker in follow_ups:
        assert rows.get(marker) == ["ok"] and by_prompt.get(marker) == 1, (where, marker)
    started = [t for t in trials if t.handle is not None and t.handle.turn > 0]
    expected_users = len(started) + len(follow_ups)
    users = [m.text for m in history if m.role == "user" and m.text]
    assert len(users) == expected_users, f"{where}: {len(users)} user messages"
    assert len(set(users)) == len(users), f"{where}: a user message was recorded twice"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cancel_fuzz_at_random_moments_loses_no_cancel_and_leaks_nothing(
    server: LocalServer, tag: str, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    agents_count, per_agent, quota_agents, quota_rounds = 50, 20, 10, 3
    gc.collect()
    logged_before = len(caplog.records)
    threads_before = set(threading.enumerate())
    port = server_port(server)
    sockets_before = connections_to(port)
    witness = ServerWitness(server)
    gates = Gates()
    with suite_figures("cancel fuzz", provider.name) as figures:
        config = provider.config()
        runtime = AgentRuntime(config)
        quota_runtime = AgentRuntime(config)
        try:
            crowd = [runtime.create_agent(tools=gates.tools()) for _ in range(agents_count)]
            limited = [quota_runtime.create_agent() for _ in range(quota_agents)]
            trials: dict[int, list[Trial]] = {i: [] for i in range(agents_count)}
            follow_ups: dict[int, list[str]] = {i: [] for i in range(agents_count)}

            def fuzz(index: int) -> None:
                rng = random.Random(SEED * 1000 + index)
                agent = crowd[index]
                for number in range(per_agent):
                    marker = f"{tag}a{index}t{number}"
                    kind = rng.choice(FUZZ_KINDS)
                    via = rng.choice(["runtime", "handle"])
                    trials[index] += run_trial(rng, agent, gates, marker, kind, via)
                    if rng.random() < FOLLOW_UP_SHARE or number == per_agent - 1:
                        next_turn_works(agent, f"{marker}f")
                        follow_ups[index].append(f"{marker}f")

            def quota_fuzz() -> int:
                """Cancels during 429 waits, on their own runtime: a 429 blocks its credential."""
                cancels = 0
                for round_ in range(quota_rounds):
                    markers = [f"{tag}q{i}r{round_}" for i in range(quota_agents)]
                    for marker in markers:
                        server.push_faults("429 minute 5s", match=f"{marker}c")
                    handles = [
                        a.chat(f"limited {m}c") for a, m in zip(limited, markers, strict=True)
                    ]
                    for agent, handle in zip(limited, handles, strict=True):
                        wait_for_event(handle, Waiting)
                        assert quota_runtime.cancel(agent) is True, "no turn in the 429 wait"
                        expect_cancelled(handle, "429 wait")
                        cancels += 1
                    for agent, marker in zip(limited, markers, strict=True):
                        rows = rows_for(quota_runtime, agent, f"{marker}c")
                        assert [e.status for e in rows] in ([], ["rate-limited"]), rows
                        next_turn_works(agent, f"{marker}f")
                return cancels

            with concurrent.futures.ThreadPoolExecutor(agents_count + 1) as pool:
                quota = pool.submit(quota_fuzz)
                for future in [pool.submit(fuzz, i) for i in range(agents_count)]:
                    future.result()
                quota_cancels = quota.result()

            grouped = witness.by_marker(re.escape(tag) + r"(a\d+)t")
            for index, agent in enumerate(crowd):
                check_fuzz_agent(
                    runtime, agent, trials[index], grouped.get(f"a{index}", []), follow_ups[index]
                )
            quota_requests = witness.by_marker(re.escape(tag) + r"(q\d+)r")
            for index, agent in enumerate(limited):
                sent = len(quota_requests.get(f"q{index}", []))
                assert sent == len(quota_runtime.agent_ledger(agent)), f"quota agent {index}"
            all_trials = [t for group in trials.values() for t in group]
            figures.trials = len(all_trials) + quota_cancels
            kinds = [t.kind for t in all_trials]
            figures.details = {k: kinds.count(k) for k in sorted(set(kinds))}
            figures.details["429 wait"] = quota_cancels
            figures.details["agents"] = agents_count + quota_agents
            assert figures.trials >= 1000
            for agent in crowd + limited:
                agent.wait_for_idle(timeout=10)
            assert loop_tasks(runtime) == 0, "tasks left on the loop with every agent idle"
            assert loop_tasks(quota_runtime) == 0
        finally:
            gates.release_all()
            runtime.shutdown(10)
            quota_runtime.shutdown(10)
            server.clear_faults()
        for stopped in (runtime, quota_runtime):
            assert stopped.closed and not stopped.thread.is_alive()
            assert stopped.loop.is_closed()
            left = runtime_threads(stopped)
            assert not left, f"threads of a stopped runtime still alive: {left}"
        assert threads_left(threads_before) == []
        assert connections_to(port) <= sockets_before, "sockets to the server left open"
        gc.collect()
        unretrieved = [
            r.getMessage()
            for r in caplog.records[logged_before:]
            if r.name == "asyncio" and any(text in r.getMessage() for text in UNRETRIEVED)
        ]
        assert not unretrieved, unretrieved[:3]
        figures.passed = figures.trials


@pytest.mark.parametrize("seed", range(3))
def test_cancel_storm_logs_no_unretrieved_task_exception(
    server: LocalServer, tag: str, provider: Provider, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancel every turn of 100 agents at once, mid-flight, and collect the garbage."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    gc.collect()
    logged_before = len(caplog.records)
    rng = random.Random(SEED + seed)
    with started_runtime(provider.config()) as runtime:
        crowd = [runtime.create_agent() for _ in range(100)]
        prompts = ["@@fault hang", "@@fault hang_headers", "@@delay 10\n@@chunks 50", ""]
        handles = [a.chat(f"{rng.choice(prompts)}\nstorm {tag}a{i}z") for i, a in enumerate(crowd)]
        for handle in rng.sample(handles, len(handles)):
            handle.cancel()
        for handle in handles:
            outcome = settle(handle, CANCEL_TIMEOUT)
            assert isinstance(outcome, TurnCancelled | TurnResult), outcome
    gc.collect()
    unretrieved = [
        r.getMessage()
        for r in caplog.records[logged_before:]
        if r.name == "asyncio" and any(text in r.getMessage() for text in UNRETRIEVED)
    ]
    assert not unretrieved, unretrieved[:3]
