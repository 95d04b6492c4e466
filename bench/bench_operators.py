"""Figure 13: semantic operators — calls, recall, throughput.

(a) `topk` of k = 10 among n = 1,000 rows in random order, judged by an exact comparison
    oracle (the larger number wins): the model calls the tournament makes, against the
    comparisons a full comparison sort makes on the same rows (Python's `sorted`, a
    merge sort, counting its comparisons). The result is checked against the true top 10.
(b) `join` of 1,000 x 1,000 synthetic catalogue rows with 1,000 known matches: the right
    side rewords each left row (words reordered, one word dropped or replaced in 30 % of
    rows, many rows sharing most words), judged by an oracle that knows the true pairs.
    Calls made and recall with embedding blocking at several `candidates`, against the
    1,000,000 calls of asking every pair.
(c) `filter` of 200 rows at `rpm=1200` on the local server's scripted engine: the rate of
    its requests as the server received them (first to last), against the limit.

(a) and (b) count calls, not time: they run on `FakeBackend` with the local server's own
scripted embeddings (`server/engines/vectors.py`, the same hashed bags of words the
scripted engine serves), because the scripted engine cannot judge which of two rows is
better or whether two rows match; the calls go through the same map engine.

Targets: topk fewer calls than the sort; join at most 2 % of n x m calls at recall >= 0.95;
filter >= 0.95 of the rate limit.
"""

from __future__ import annotations

import functools
import json
import random
import re
import time
from typing import Any

import pandas as pd
from _common import main, row, runtime_config

from agentrt_jupyter import AgentRuntime, FakeBackend, RuntimeConfig
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.content import TextPart
from agentrt_jupyter.server.process import LocalServer

FIGURE = "13. Operators"
ITEMS = re.compile(r"First item:\n(.*)\n\nSecond item:\n(.*)$", re.S)
STATEMENT = re.compile(r"hold\? (.*) is the same item as (.*)\n")
ADJECTIVES = ["blue", "red", "green", "steel", "compact", "large", "small", "pro", "lite", "dual"]
NOUNS = ["widget", "gadget", "bracket", "valve", "pump", "sensor", "cable", "drill", "lamp", "fan"]
BRANDS = ["acme", "bolt", "crux", "delta", "ember", "forge", "gamma", "helix"]


def prompt_of(request: ModelRequest) -> str:
    part = request.messages[-1].parts[-1]
    assert isinstance(part, TextPart)
    return part.text


def larger_number_wins(request: ModelRequest) -> str:
    first, second = (int(s.split()[-1]) for s in ITEMS.search(prompt_of(request)).groups())
    return json.dumps({"first_is_better": first > second})


def fake_runtime(handler: Any) -> tuple[AgentRuntime, FakeBackend]:
    fake = FakeBackend(handler)
    config = RuntimeConfig(store_path=None, api_key="bench")
    return AgentRuntime(config, backend_factory=lambda e: fake), fake


def bench_topk(n: int, k: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = list(range(n))
    random.Random(12).shuffle(values)
    frame = pd.DataFrame({"text": [f"ticket urgency {v}" for v in values]})
    runtime, fake = fake_runtime(larger_number_wins)
    try:
        top = runtime.topk(frame, "most urgent", k=k, by="{text}", progress=False,
                           concurrency=64, max_concurrency=256)  # fmt: skip
    finally:
        runtime.shutdown(10)
    correct = [int(t.split()[-1]) for t in top["text"]] == list(range(n - 1, n - 1 - k, -1))
    counted = [0]

    def compare(a: int, b: int) -> int:
        counted[0] += 1
        return (a > b) - (a < b)

    sorted(values, key=functools.cmp_to_key(compare))
    summary = top.attrs["agentrt"]
    calls, sort_calls = len(fake.requests), counted[0]
    details = {
        "n": n, "k": k, "calls": calls, "rounds": summary.rounds, "correct": correct,
        "sort_comparisons": sort_calls, "max_calls": summary.details["max_calls"],
    }  # fmt: skip
    rows = [
        row(
            FIGURE,
            f"topk k={k} of n={n:,}: model calls (tournament)",
            f"{calls:,} calls in {summary.rounds} rounds; top {k} correct: {correct}",
            f"full comparison sort: {sort_calls:,} comparisons",
            f"{calls / sort_calls:.3f}",
            "< sort, = true top k",
            calls < sort_calls and correct,
            f"bound (max_calls) {summary.details['max_calls']:,}",
        )
    ]
    return details, rows


def catalogue(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Left rows, right rows (shuffled rewordings) and the true pairs, by their text."""
    rng = random.Random(seed)
    left, right, truth = [], [], {}
    for i in range(n):
        words = [rng.choice(BRANDS), rng.choice(ADJECTIVES), rng.choice(ADJECTIVES),
                 rng.choice(NOUNS), f"m{1000 + i}"]  # fmt: skip
        other = words[:]
        rng.shuffle(other)
        if rng.random() < 0.3:
            other[rng.randrange(len(other))] = rng.choice(ADJECTIVES + NOUNS)
        left.append(" ".join(words))
        right.append(" ".join(other))
        truth[left[-1]] = right[-1]
    order = list(range(n))
    rng.shuffle(order)
    return (
        pd.DataFrame({"product": left}),
        pd.DataFrame({"name": [right[i] for i in order]}),
        truth,
    )


def bench_join(n: int, knobs: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    left, right, truth = catalogue(n, 5)

    def oracle(request: ModelRequest) -> str:
        a, b = STATEMENT.search(prompt_of(request)).groups()
        return json.dumps({"match": truth[a] == b})

    details: dict[str, Any] = {"n": n, "m": n, "knobs": {}}
    rows = []
    for candidates in knobs:
        runtime, fake = fake_runtime(oracle)
        try:
            pairs = runtime.join(left, right, "{left.product} is the same item as {right.name}",
                                 candidates=candidates, progress=False, concurrency=64,
                                 max_concurrency=256)  # fmt: skip
        finally:
            runtime.shutdown(10)
        found = sum(truth[p] == r for p, r in zip(pairs["product"], pairs["name"], strict=True))
        recall, calls = found / n, len(fake.requests)
        share = calls / (n * n)
        details["knobs"][candidates] = {"calls": calls, "recall": recall, "share": share}
        rows.append(
            row(
                FIGURE,
                f"join {n:,} x {n:,}, candidates={candidates}: calls and recall",
                f"{calls:,} calls ({share:.2%} of n x m), recall {recall:.3f}",
                f"every pair: {n * n:,} calls",
                f"{share:.4f}",
                "<= 2 % of calls at recall >= 0.95",
                share <= 0.02 and recall >= 0.95,
                f"+ {-(-2 * n // 100)} embedding calls",
            )
        )
    return details, rows


def bench_filter(rows_count: int, rpm: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    tag = f"bench{random.Random().randrange(10**9)}"
    frame = pd.DataFrame({"review": [f"review {i} {tag}" for i in range(rows_count)]})
    template = 'The review {review} is fine\n@@reply {{"match": true}}'
    with LocalServer.start("scripted") as server:
        runtime = AgentRuntime(runtime_config(server))
        try:
            runtime.chat(runtime.create_agent(), "warm up").text()  # the SDK is imported
            start = time.perf_counter()
            kept = runtime.filter(frame, template, rpm=rpm, concurrency=16, progress=False)
            elapsed = time.perf_counter() - start
            received = sorted(
                r["received"] for r in server.requests() if tag in json.dumps(r.get("body"))
            )
        finally:
            runtime.shutdown(10)
    rate = (len(received) - 1) / (received[-1] - received[0]) * 60
    details = {"rows": rows_count, "rpm": rpm, "seconds": elapsed, "requests_per_minute": rate,
               "requests": len(received), "kept": len(kept)}  # fmt: skip
    return details, [
        row(
            FIGURE,
            f"filter of {rows_count} rows at rpm={rpm:g}: requests per minute (server's clock)",
            f"{rate:,.0f} requests/min, {len(kept)} rows kept, {elapsed:.1f} s in all",
            f"the limit: {rpm:,.0f}/min",
            f"{rate / rpm:.3f}",
            ">= 0.95 of the limit",
            rate / rpm >= 0.95 and len(kept) == rows_count == len(received),
            "first to last request; the run adds the last reply and startup",
        )
    ]


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n = 1000
    topk_details, topk_rows = bench_topk(n, 10)
    join_details, join_rows = bench_join(n, [1, 3] if quick else [1, 3, 5, 10])
    filter_details, filter_rows = bench_filter(100 if quick else 200, 1200)
    details = {"topk": topk_details, "join": join_details, "filter": filter_details}
    return topk_rows + join_rows + filter_rows, details


if __name__ == "__main__":
    main("operators", __doc__, run)
