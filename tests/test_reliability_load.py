"""Load with faults: 200 agents x 5 queued turns, ~5 % of them faulted, ~5 % cancelled.

Every turn must end; the counts must reconcile: turns started = turns ended (and = turn
count), one user message per started turn, in order, and the server saw one request per
ledger row (a cancel may cut an attempt before its request reached the server: then the
row is "cancelled" and the server has none). It runs on each provider, through its
own SDK, on the local server.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from agentrt_jupyter import AgentRuntime, ChatHandle
from agentrt_jupyter.server.process import LocalServer

from .reliability_helpers import (
    Provider,
    ServerWitness,
    assert_valid_request,
    connections_to,
    prompt_of,
    server_port,
    settle,
    suite_figures,
)

SEED = 5_200
AGENTS, TURNS = 200, 5
FAULT_SHARE = CANCEL_SHARE = 0.05
CANCEL_WINDOW = 3.0
"""Cancels strike at a random moment within this many seconds of the first chat."""


@dataclass(frozen=True)
class LoadFault:
    """A fault and the status its turn ends with (a transient one is retried away)."""

    spec: str
    once: bool
    status: str


LOAD_FAULTS = [
    LoadFault("503", once=True, status="complete"),
    LoadFault("drop_headers", once=True, status="complete"),
    LoadFault("429 minute 0.2s", once=True, status="complete"),
    LoadFault("slow 10", once=False, status="complete"),
    LoadFault("drop_after 2", once=False, status="incomplete"),
    LoadFault("sse_error 2 503", once=False, status="error"),
    LoadFault("500", once=False, status="error"),
]


@dataclass
class PlannedTurn:
    agent: int
    number: int
    marker: str
    prompt: str
    fault: LoadFault | None
    cancel_at: float | None
    handle: ChatHandle | None = None


def plan(tag: str, rng: random.Random) -> list[PlannedTurn]:
    turns = []
    for agent in range(AGENTS):
        for number in range(TURNS):
            marker = f"{tag}a{agent}t{number}e"
            fault = rng.choice(LOAD_FAULTS) if rng.random() < FAULT_SHARE else None
            directive = f"@@fault {fault.spec}\n" if fault and not fault.once else ""
            cancel_at = rng.uniform(0, CANCEL_WINDOW) if rng.random() < CANCEL_SHARE else None
            prompt = f"{directive}turn {number} of agent {agent} {marker}"
            turns.append(PlannedTurn(agent, number, marker, prompt, fault, cancel_at))
    return turns


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_hundred_agents_five_turns_with_faults_and_cancels_reconcile(
    server: LocalServer, tag: str, provider: Provider
) -> None:
    rng = random.Random(SEED)
    turns = plan(tag, rng)
    witness = ServerWitness(server)
    port = server_port(server)
    sockets_before = connections_to(port)
    with suite_figures("load with faults", provider.name) as figures:
        runtime = AgentRuntime(provider.config())
        try:
            crowd = [runtime.create_agent() for _ in range(AGENTS)]
            for turn in turns:
                if turn.fault is not None and turn.fault.once:
                    server.push_faults(turn.fault.spec, match=turn.marker)
            started = time.monotonic()
            for turn in turns:
                turn.handle = crowd[turn.agent].chat(turn.prompt)
            cancels = sorted(
                (t for t in turns if t.cancel_at is not None), key=lambda t: t.cancel_at
            )

            def cancel_at_random_moments() -> None:
                for turn in cancels:
                    assert turn.cancel_at is not None and turn.handle is not None
                    time.sleep(max(0.0, started + turn.cancel_at - time.monotonic()))
                    turn.handle.cancel()

            canceller = threading.Thread(target=cancel_at_random_moments, name="load-canceller")
            canceller.start()
            deadline = started + 180.0
            for turn in turns:
                assert turn.handle is not None
                settle(turn.handle, max(1.0, deadline - time.monotonic()))
            canceller.join(30)
            figures.details["elapsed_turns_s"] = round(time.monotonic() - started, 1)

            statuses: Counter[str] = Counter()
            for turn in turns:
                assert turn.handle is not None and turn.handle.done
                status = turn.handle.status
                statuses[status] += 1
                natural = turn.fault.status if turn.fault else "complete"
                allowed = {natural, "cancelled"} if turn.cancel_at is not None else {natural}
                assert status in allowed, f"{turn.marker} ({turn.fault}): {status}"
            figures.trials = len(turns)
            figures.details.update(
                agents=AGENTS,
                turns_per_agent=TURNS,
                faults=sum(t.fault is not None for t in turns),
                cancels=len(cancels),
                statuses=dict(statuses),
            )

            grouped = witness.by_marker(re.escape(tag) + r"(a\d+)t\d+e")
            requests_total = rows_total = 0
            for index, agent in enumerate(crowd):
                mine = [t for t in turns if t.agent == index]
                ran = [t for t in mine if t.handle is not None and t.handle.turn > 0]
                assert agent.turn_count() == len(ran), f"agent {index}"
                history = agent.history()
                users = [m.text for m in history if m.role == "user" and m.text]
                assert users == [t.prompt for t in ran], f"agent {index}: user messages {users}"
                prompt_of_turn = {
                    m.turn: m.text.split()[-1] for m in history if m.role == "user" and m.text
                }
                rows: dict[str, list[str]] = {}
                ledger = agent.ledger()
                for entry in ledger:
                    rows.setdefault(prompt_of_turn[entry.turn], []).append(entry.status)
                sent: Counter[str] = Counter()
                requests = grouped.get(f"a{index}", [])
                for record in requests:
                    assert_valid_request(record)
                    sent[prompt_of(record).split()[-1]] += 1
                for turn in mine:
                    statuses_of = rows.get(turn.marker, [])
                    if turn.cancel_at is None:
                        assert sent[turn.marker] == len(statuses_of), (turn.marker, statuses_of)
                    else:
                        unsent = len(statuses_of) - sent[turn.marker]
                        assert 0 <= unsent <= statuses_of.count("cancelled"), (
                            turn.marker,
                            statuses_of,
                            sent[turn.marker],
                        )
                requests_total += len(requests)
                rows_total += len(ledger)
                figures.passed += len(mine)
            figures.details.update(requests=requests_total, ledger_rows=rows_total)
        finally:
            runtime.shutdown(10)
            server.clear_faults()
        assert runtime.closed and not runtime.thread.is_alive() and runtime.loop.is_closed()
        assert connections_to(port) <= sockets_before, "sockets to the server left open"
