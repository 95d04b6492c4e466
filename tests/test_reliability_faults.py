"""The fault matrix: every scripted fault on 1 agent and on 100 at once, plus faulty tools.

Each case states the outcome a user is promised: success, or a typed TurnError with the
text that streamed kept exactly once; the next turn works and its request is a valid
conversation; and the server saw exactly one request per ledger row (retries happen in
our layer, one row each). The server's log is the witness.

Every provider runs it through its own SDK on the local server's route for it (the
`provider` fixture): Gemini every case on 1 and on 100 agents; OpenAI and Anthropic every
case on 1 agent and `CROWD_SUBSET` on 100 as well (about a minute and a half of CI for
both), with the faults their wire says differently (`provider_case`) and Anthropic's 529.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    BackendError,
    QuotaExceeded,
    RuntimeConfig,
    StreamBroken,
    TurnError,
    TurnResult,
    Waiting,
)
from agentrt_jupyter.server.process import LocalServer

from .conftest import assert_valid_conversation, runtime_config
from .reliability_helpers import (
    Provider,
    ServerWitness,
    agent_tag,
    assert_valid_request,
    bounded,
    echo_prefix,
    prompt_of,
    settle,
    started_runtime,
    suite_figures,
)

WORDS = "alpha beta gamma delta epsilon"
STALL_TIMEOUT = 3.0
"""idle_chunk_timeout for the cases that stall; the others keep the conftest's 20 s."""
MATRIX_DEADLINE = 45.0
"""Both turns of every agent of a case end within this: several times the slowest promised
case (three quota backoffs of 1, 2 and 4 s), so only a hang or a runaway backoff misses it."""


@dataclass(frozen=True)
class FaultCase:
    """One fault and what the user is promised when it strikes.

    `outcome` names the promise (see `expected_statuses`); `once` pushes the fault for one
    request only (a transient failure) instead of writing it in the prompt, where every
    attempt meets it. `chunks_before` is how many chunks stream before a mid-stream fault.
    """

    spec: str
    outcome: str
    once: bool = False
    error: type[TurnError] | tuple[type[TurnError], ...] | None = None
    chunks_before: int = 0
    code: int | None = None
    scope: str | None = None
    text: str | None = None

    @property
    def id(self) -> str:
        return f"once {self.spec}" if self.once else self.spec

    @property
    def stalls(self) -> bool:
        return self.outcome == "stalled" or self.spec.startswith("hang")

    def prompt(self, marker: str) -> str:
        body = f"{WORDS} {marker}"
        return body if self.once else f"@@fault {self.spec}\n{body}"

    def reply(self, marker: str) -> str | None:
        """The full reply of a turn that succeeds."""
        if self.text is not None:
            return self.text
        return f"Echo: {WORDS} {marker}"


def statuses_match(
    case: FaultCase, config: RuntimeConfig, statuses: list[str], *, crowded: bool
) -> bool:
    """Whether the faulted turn's ledger statuses (one row per HTTP attempt) are promised.

    `crowded`: the agent shares its key with 99 others that meet the same fault."""
    attempts = config.http_retry_attempts
    # On a key that stays blocked, a wait during which another agent's retry is limited
    # again counts against quota_max_retries too, so a crowded turn may give up having
    # sent fewer requests (none, if it never got a turn); requests = rows still holds.
    fewest = 0 if crowded else config.quota_max_retries + 1
    if case.outcome == "typed_failure":
        waits = {"retried", "rate-limited"}
        return len(statuses) <= attempts + config.quota_max_retries and (
            (crowded and not statuses)
            or (set(statuses[:-1]) <= waits and statuses[-1] in ("error", "rate-limited"))
        )
    expected = {
        "ok": [["ok"]],
        "retried_ok": [["retried", "ok"]],
        "rate_limited_ok": [["rate-limited", "ok"]],
        "retries_exhausted": [["retried"] * (attempts - 1) + ["error"]],
        "refused": [["error"]],
        "quota_exhausted": [
            ["rate-limited"] * n for n in range(fewest, config.quota_max_retries + 2)
        ],
        "quota_at_once": [["rate-limited"]],
        "cut_mid_stream": [["error"], ["rate-limited"]] if case.code == 429 else [["error"]],
        "stalled": [["retried"] * (n - 1) + ["error"] for n in range(1, attempts + 1)],
    }
    return statuses in expected[case.outcome]


MATRIX: list[FaultCase] = [
    *(
        FaultCase(str(code), "retries_exhausted", error=BackendError, code=code)
        for code in (500, 502, 503, 504, 408)
    ),
    FaultCase("400", "refused", error=BackendError, code=400),
    FaultCase("429 minute 0.2s", "quota_exhausted", error=QuotaExceeded, scope="minute"),
    FaultCase("429 day", "quota_at_once", error=QuotaExceeded, scope="day"),
    FaultCase("429 zero", "quota_at_once", error=QuotaExceeded, scope="zero"),
    FaultCase("drop_headers", "retries_exhausted", error=BackendError),
    FaultCase("drop_after 0", "retries_exhausted", error=BackendError),
    FaultCase("drop_after 3", "cut_mid_stream", error=StreamBroken, chunks_before=3),
    FaultCase("sse_error 2 503", "cut_mid_stream", error=BackendError, chunks_before=2, code=503),
    FaultCase(
        "sse_error 2 429",
        "cut_mid_stream",
        error=(QuotaExceeded, BackendError),
        chunks_before=2,
        code=429,
    ),
    FaultCase("hang_after 2", "cut_mid_stream", error=StreamBroken, chunks_before=2),
    FaultCase("hang", "stalled", error=(StreamBroken, BackendError)),
    FaultCase("hang_headers", "stalled", error=(StreamBroken, BackendError)),
    FaultCase("slow 20", "ok"),
    FaultCase("tiny 50", "ok", text="x" * 50),
    *(FaultCase(spec, "retried_ok", once=True) for spec in ("500", "503", "408")),
    FaultCase("drop_headers", "retried_ok", once=True),
    FaultCase("drop_after 0", "retried_ok", once=True),
    FaultCase("429 minute 0.2s", "rate_limited_ok", once=True),
    FaultCase("drop_after 3", "cut_mid_stream", once=True, error=StreamBroken, chunks_before=3),
    FaultCase(
        "sse_error 2 503",
        "cut_mid_stream",
        once=True,
        error=BackendError,
        chunks_before=2,
        code=503,
    ),
]

GARBAGE_REPLY_FAULTS: list[FaultCase] = [
    *(
        FaultCase(spec, "typed_failure", error=TurnError)
        for spec in ("html 502", "html 200", "bad_json 200", "bad_json 500", "quota_garbage")
    ),
    FaultCase("truncated_json", "typed_failure", error=TurnError),
    FaultCase("sse_garbage 2", "cut_mid_stream", error=TurnError, chunks_before=2),
    FaultCase("redirect", "refused", error=BackendError, code=302),
    FaultCase("redirect 307", "refused", error=BackendError, code=307),
]
"""Replies that are not Gemini's (server/faults.py): whatever the exact error, the turn
fails typed, in bounded time, with a ledger row per request. Give a kind its exact
outcome here once it is settled. A redirect loop is one attempt, not retried: the
transport follows each redirect (the follow-ups carry the server's redirect marker, not
the prompt), and the error names the status and where it pointed."""


CROWD_SUBSET = frozenset({"503", "429 minute 0.2s", "drop_after 3", "once 429 minute 0.2s"})
"""The cases the OpenAI and Anthropic providers also run on 100 agents (every case runs
on 1 agent): a retried 5xx, a shared quota wait, a cut mid-stream and a quota wait that
ends well, the paths where many agents on one credential meet."""


OVERLOADED_FAULTS: list[FaultCase] = [
    FaultCase("529", "retries_exhausted", error=BackendError, code=529),
    FaultCase("529", "retried_ok", once=True),
    FaultCase("sse_error 2 529", "cut_mid_stream", error=BackendError, chunks_before=2, code=529),
]
"""Anthropic's 529 overloaded_error: retried like a 503 before any text, never after."""


def provider_case(provider: str, case: FaultCase) -> FaultCase | None:
    """What `case` promises on `provider`, where its wire says it otherwise (None: the
    fault has no meaning there).

    OpenAI: a 429 per day or with limit 0 is the billing refusal `insufficient_quota`
    (scope "billing", at once, its ledger row an error); an error event names a type,
    no HTTP status.
    Anthropic: a 429 is always a wait of `retry-after` seconds (no per-day or zero limit:
    a long wait is `test_a_wait_past_quota_max_wait_fails_at_once`); an error event's
    5xx type is `api_error`, 500. Both: the SDK's transport follows a redirect (a 302
    turns the POST into a GET) and the error names the redirect; a redirect loop gives
    up without the last reply, so without its status.
    """
    if provider == "gemini":
        return case
    if case.spec == "redirect 307":
        return replace(case, code=None)
    if provider == "openai":
        if case.spec in ("429 day", "429 zero"):
            return replace(case, outcome="refused", scope="billing")
        if case.spec.startswith("sse_error"):
            return replace(case, code=None)
        return case
    if case.spec in ("429 day", "429 zero"):
        return None
    if case.spec.startswith("sse_error") and case.code is not None and 500 <= case.code < 529:
        return replace(case, code=500)
    return case


PROVIDER_CASES = [
    pytest.param(
        name, adjusted, name == "gemini" or adjusted.id in CROWD_SUBSET, id=f"{name}-{case.id}"
    )
    for name in ("gemini", "openai", "anthropic")
    for case in MATRIX + GARBAGE_REPLY_FAULTS + (OVERLOADED_FAULTS if name == "anthropic" else [])
    if (adjusted := provider_case(name, case)) is not None
]


def check_agent(
    where: str,
    case: FaultCase,
    config: RuntimeConfig,
    runtime: AgentRuntime,
    agent_id: str,
    marker: str,
    first: TurnResult | TurnError,
    second: TurnResult | TurnError,
    requests: list[dict[str, Any]],
) -> None:
    """Everything promised about one agent's faulted turn and the turn after it."""
    if case.error is None:
        assert isinstance(first, TurnResult), f"{where}: expected success, got {first!r}"
        assert first.text == case.reply(marker), where
    else:
        assert isinstance(first, case.error), f"{where}: expected {case.error}, got {first!r}"
        if case.code is not None and isinstance(first, BackendError):
            assert first.code == case.code, f"{where}: {first!r} code {first.code}"
        if case.scope is not None:
            assert isinstance(first, QuotaExceeded) and first.scope == case.scope, where
    partial = echo_prefix(f"{WORDS} {marker}", case.chunks_before)
    if case.outcome == "cut_mid_stream":
        assert isinstance(first, TurnError)
        assert first.partial_text == partial, f"{where}: partial {first.partial_text!r}"
    assert isinstance(second, TurnResult), f"{where}: the next turn failed: {second!r}"
    assert second.text == f"Echo: next {marker}", where

    next_prompt = f"next {marker}"
    later = [r for r in requests if prompt_of(r) == next_prompt]
    faulted = [r for r in requests if r not in later]
    ledger = runtime.agent_ledger(agent_id)
    statuses = [e.status for e in ledger if e.turn == 1]
    crowded = len(runtime.agents()) > 1
    assert statuses_match(case, config, statuses, crowded=crowded), f"{where}: ledger {statuses}"
    assert [e.status for e in ledger if e.turn == 2] == ["ok"], where
    assert len(faulted) == len(statuses), (
        f"{where}: the server saw {len(faulted)} requests for {len(statuses)} ledger rows"
    )
    assert len(later) == 1, f"{where}: {len(later)} requests for the next turn"
    for record in requests:
        assert_valid_request(record)

    history = runtime.history(agent_id)
    users = [m.text for m in history if m.role == "user" and m.text]
    assert users == [case.prompt(marker), next_prompt], f"{where}: user messages {users}"
    models = [(m.text, m.status) for m in history if m.role == "model"]
    if case.error is None:
        assert models == [(case.reply(marker), "complete"), (f"Echo: {next_prompt}", "complete")]
    elif case.outcome == "cut_mid_stream":
        assert len(models) == 2, f"{where}: model messages {models}"
        assert models[0][0] == partial and models[0][1] in ("incomplete", "error"), where
    else:
        assert models == [(f"Echo: {next_prompt}", "complete")], f"{where}: {models}"


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("provider", "case", "crowd"), PROVIDER_CASES, indirect=["provider"])
def test_fault_ends_the_turn_as_promised_and_every_attempt_is_one_ledger_row(
    server: LocalServer, tag: str, provider: Provider, case: FaultCase, crowd: bool
) -> None:
    """The fault on 1 agent alone and, with `crowd`, on 100 agents at once, side by side:
    each group has its own runtime, so the lone agent shares neither a loop nor a
    credential's quota."""
    config = provider.config(idle_chunk_timeout=STALL_TIMEOUT if case.stalls else 20.0)
    witness = ServerWitness(server)
    groups = {"1 agent": [agent_tag(f"{tag}s", 0)]}
    groups["100 agents"] = [agent_tag(f"{tag}m", i) for i in range(100 if crowd else 0)]
    with (
        suite_figures("fault matrix", f"{provider.name} {case.id}") as figures,
        started_runtime(config) as alone,
        started_runtime(config) as together,
    ):
        runtimes = {"1 agent": alone, "100 agents": together}
        agents = {g: [runtimes[g].create_agent() for _ in ms] for g, ms in groups.items()}
        if case.once:
            for marker in [*groups["1 agent"], *groups["100 agents"]]:
                server.push_faults(case.spec, match=marker)
        deadline = time.monotonic() + MATRIX_DEADLINE
        firsts, seconds = {}, {}
        for prompt, results in ((case.prompt, firsts), (lambda m: f"next {m}", seconds)):
            handles = {
                g: [a.chat(prompt(m)) for a, m in zip(agents[g], groups[g], strict=True)]
                for g in groups
            }
            for group, started in handles.items():
                results[group] = [settle(h, max(1.0, deadline - time.monotonic())) for h in started]
        grouped = witness.by_marker(re.escape(tag) + r"[sm]a\d+z")
        for group, markers in groups.items():
            for index, marker in enumerate(markers):
                figures.trials += 1
                check_agent(
                    f"[{case.id}, {group}] agent {index}",
                    case,
                    config,
                    runtimes[group],
                    agents[group][index].id,
                    marker,
                    firsts[group][index],
                    seconds[group][index],
                    grouped.get(marker, []),
                )
                figures.passed += 1
        if case.outcome == "quota_exhausted":
            lone = groups["1 agent"][0]
            received = [r["received"] for r in grouped[lone] if prompt_of(r) != f"next {lone}"]
            gaps = [b - a for a, b in itertools.pairwise(received)]
            assert all(gap >= 0.2 for gap in gaps), f"retried before retryDelay: {gaps}"


def test_a_wait_past_quota_max_wait_fails_at_once(
    server: LocalServer, tag: str, provider: Provider
) -> None:
    witness = ServerWitness(server)
    with started_runtime(provider.config(quota_max_wait=1.0)) as runtime:
        agent = runtime.create_agent()
        outcome = settle(agent.chat(f"@@fault 429 minute 60s\n{tag}"), 15.0)
        assert isinstance(outcome, QuotaExceeded), outcome
        assert outcome.scope == "minute"
        assert [e.status for e in agent.ledger()] == ["rate-limited"]
        assert len(witness.requests()) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("provider", "spec"),
    [
        ("gemini", "429 minute 0.2s"),
        ("gemini", "quota_garbage"),
        ("openai", "429 minute 0.2s"),
        ("anthropic", "429 minute 0.2s"),
    ],
    indirect=["provider"],
)
def test_a_hundred_agents_hitting_one_429_each_wait_one_episode_and_all_complete(
    server: LocalServer, tag: str, provider: Provider, spec: str
) -> None:
    """N hits are one episode: the credential's wait does not grow with N, and waiting
    behind other agents' first 429s never uses up a turn's retries, however the herd's
    requests spread out in time. `quota_garbage` has no usable RetryInfo (the backoff);
    OpenAI and Anthropic agents meet their own 429s (retry-after headers)."""
    witness = ServerWitness(server)
    markers = [agent_tag(tag, i) for i in range(100)]
    with (
        suite_figures("quota episode", f"{provider.name} 100 agents x one {spec}") as figures,
        started_runtime(provider.config()) as runtime,
    ):
        crowd = [runtime.create_agent() for _ in markers]
        for marker in markers:
            server.push_faults(spec, match=marker)
        handles = [a.chat(f"limited {m}") for a, m in zip(crowd, markers, strict=True)]
        deadline = time.monotonic() + 60.0
        outcomes = [settle(h, max(1.0, deadline - time.monotonic())) for h in handles]
        failed = [o for o in outcomes if not isinstance(o, TurnResult)]
        assert not failed, f"{len(failed)} of 100 turns failed, e.g. {failed[0]!r}"
        grouped = witness.by_marker(re.escape(tag) + r"a\d+z")
        for agent, marker, handle in zip(crowd, markers, handles, strict=True):
            figures.trials += 1
            ledger = agent.ledger()
            assert [e.status for e in ledger] == ["rate-limited", "ok"], ledger
            assert len(grouped[marker]) == 2
            waits = [e.seconds for e in handle if isinstance(e, Waiting)]
            assert waits and max(waits) < 10.0, f"{marker} waited {waits} s for one {spec}"
            figures.passed += 1


def parse_command_line(flag: str) -> str:
    """Parse a command line, as a script does (argparse exits on a bad flag)."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--count", type=int, required=True)
    return str(parser.parse_args([flag]).count)


RAISED: dict[str, Callable[[], BaseException]] = {
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
}


def raise_sync(kind: str) -> str:
    """Raise the named BaseException from a worker thread."""
    raise RAISED[kind]()


async def raise_async(kind: str) -> str:
    """Raise the named BaseException on the runtime loop."""
    raise RAISED[kind]()


TOOL_CASES = [
    pytest.param("parse_command_line", '{"flag": "--bogus"}', id="sync argparse SystemExit"),
    *(
        pytest.param(tool, f'{{"kind": "{kind}"}}', id=f"{how} {kind}")
        for tool, how in (("raise_sync", "sync"), ("raise_async", "async"))
        for kind in RAISED
    ),
]


@pytest.mark.parametrize(("tool", "args"), TOOL_CASES)
def test_a_tool_raising_a_base_exception_is_that_tools_error_and_the_runtime_goes_on(
    server: LocalServer, tag: str, tool: str, args: str
) -> None:
    witness = ServerWitness(server)
    with (
        suite_figures("tool exceptions", f"{tool} {args}") as figures,
        started_runtime(runtime_config(server)) as runtime,
    ):
        figures.trials = 1
        agent = runtime.create_agent(tools=[parse_command_line, raise_sync, raise_async])
        other = runtime.create_agent()
        outcome = settle(agent.chat(f"@@call {tool} {args}\ncall {tag}"), 20.0)
        assert isinstance(outcome, TurnResult), f"the turn did not complete: {outcome!r}"
        assert outcome.text.startswith("Tool results: "), outcome.text
        requests = witness.requests()
        assert len(requests) == 2 == len(agent.ledger()), [r["id"] for r in requests]
        contents = requests[1]["body"]["contents"]
        assert_valid_conversation(contents)
        (answer,) = [p["functionResponse"] for p in contents[-1]["parts"]]
        assert answer["name"] == tool
        assert isinstance(answer["response"].get("error"), str), answer
        assert answer["response"]["error"], answer
        later = bounded(
            lambda: other.chat(f"later {tag}").text(timeout=10), 20.0, "another agent's turn"
        )
        assert later == f"Echo: later {tag}"
        figures.passed = 1
