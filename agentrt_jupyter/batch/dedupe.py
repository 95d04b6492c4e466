"""`runtime.dedupe(df, "{name}, {address}")`: a cluster id per row, the same for rows
that describe the same entity.

Each row is shown as the template (map's); rows with the very same text are the same
without asking. The rows are embedded, and each row's `candidates` nearest rows by cosine
are the pairs asked about (one map round, a yes/no each): n * candidates calls at most,
not n * (n - 1) / 2. The answers are closed transitively (union-find): if a is b and b is
c, a, b and c share a cluster. Cluster ids are 0, 1, ... in the order of each cluster's
first row.

The result is an `Int64` Series named `cluster`, aligned with the frame's index;
`attrs["agentrt"]` counts the calls, the pairs asked and the clusters.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidConfig
from ..operators import Operator
from ..runtime import AgentRuntime
from .engine import check_runtime
from .explain import OperatorPlan
from .join import nearest
from .rounds import (
    Ask,
    Embed,
    Rounds,
    RoundsCall,
    arun_call,
    expected_step,
    row_texts,
    run_call,
)
from .schema import yes_no_schema

FIELD = "same"
SCHEMA = yes_no_schema(FIELD)
QUESTION = (
    "Do these two records describe the same real-world entity?\n"
    "First: {first}\nSecond: {second}\n"
    'Answer with JSON {{"same": true}} if they do, else {{"same": false}}.'
)
DEFAULT_CANDIDATES = 5
NAME = "cluster"


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def labels(self) -> list[int]:
        """A cluster id per item: 0, 1, ... in the order of each cluster's first item."""
        ids: dict[int, int] = {}
        return [ids.setdefault(self.find(i), len(ids)) for i in range(len(self.parent))]


def candidate_pairs(vectors: np.ndarray, candidates: int) -> list[tuple[int, int]]:
    """Each row with its `candidates` nearest other rows, as pairs (i < j), once each."""
    if len(vectors) < 2:
        return []
    positions, _ = nearest(vectors, vectors, candidates + 1)
    pairs: set[tuple[int, int]] = set()
    for i, row in enumerate(positions):
        others = [int(j) for j in row if j != i][:candidates]
        pairs.update((min(i, j), max(i, j)) for j in others)
    return sorted(pairs)


def dedupe_rounds(texts: list[str], candidates: int) -> Rounds[pd.Series]:
    """Cluster ids for `texts`: exact copies joined, embedding candidates asked."""
    sets = UnionFind(len(texts))
    first_of: dict[str, int] = {}
    for i, text in enumerate(texts):
        sets.union(first_of.setdefault(text, i), i)
    distinct = list(first_of.values())
    asked: list[tuple[int, int]] = []
    if len(distinct) > 1:
        vectors = yield Embed([texts[i] for i in distinct])
        asked = [(distinct[a], distinct[b]) for a, b in candidate_pairs(vectors, candidates)]
    if asked:
        prompts = [QUESTION.format(first=texts[a], second=texts[b]) for a, b in asked]
        result = yield Ask(prompts, SCHEMA, "same")
        for (a, b), same in zip(asked, result[FIELD].tolist(), strict=True):
            if same is True:
                sets.union(a, b)
    labels = sets.labels()
    series = pd.Series(pd.array(labels, dtype="Int64"), name=NAME)
    series.attrs["pairs_checked"] = len(asked)
    series.attrs["clusters"] = len(set(labels))
    return series


def _prepare(
    runtime: object, frame: object, template: object, candidates: object
) -> tuple[AgentRuntime, pd.DataFrame, list[str], int]:
    checked = check_runtime(runtime)
    if not isinstance(frame, pd.DataFrame):
        raise InvalidConfig(
            f"expected a pandas DataFrame, got {type(frame).__name__}", field="frame"
        )
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise InvalidConfig(
            f"must be a positive integer, got {candidates!r:.40}", field="candidates"
        )
    return checked, frame, row_texts(checked, frame, template, "template"), candidates


def _call(runtime: object, frame: object, template: object, candidates: object) -> RoundsCall:
    checked, data, texts, count = _prepare(runtime, frame, template, candidates)
    price = functools.partial(_explain, checked, texts, count)
    finish = functools.partial(_aligned, frame=data)
    rounds = dedupe_rounds(texts, count)
    return RoundsCall(checked, "dedupe", rounds, price, {"candidates": count}, finish)


def _aligned(series: pd.Series, frame: pd.DataFrame) -> pd.Series:
    series.index = frame.index
    details = series.attrs["agentrt"].details
    details["pairs_checked"] = series.attrs.pop("pairs_checked", 0)
    details["clusters"] = series.attrs.pop("clusters", 0)
    return series


def dedupe(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    /,
    *,
    candidates: int = DEFAULT_CANDIDATES,
    **options: Any,
) -> Any:
    """A cluster id per row of `frame`; see the module docstring. `options` are map's;
    `embedding_model=` the model that embeds; `explain=True` returns the plan instead."""
    return run_call(_call(runtime, frame, template, candidates), options)


async def adedupe(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    /,
    *,
    candidates: int = DEFAULT_CANDIDATES,
    **options: Any,
) -> Any:
    """`dedupe` for an event loop."""
    return await arun_call(_call(runtime, frame, template, candidates), options)


def _explain(
    runtime: AgentRuntime, texts: list[str], candidates: int, options: dict[str, Any]
) -> OperatorPlan:
    """At most n * candidates pairs, priced by stand-in pairs of the same rows (which pairs
    are candidates is known only once the rows are embedded)."""
    distinct = list(dict.fromkeys(texts))
    n = len(distinct)
    sample = [(i, (i + j) % n) for i in range(n) for j in range(1, min(candidates, n - 1) + 1)]
    prompts = [QUESTION.format(first=distinct[a], second=distinct[b]) for a, b in sample]
    step = expected_step(runtime, Ask(prompts, SCHEMA, "same"), options, len(prompts))
    notes = (
        f"{n:,} distinct rows embedded first; at most {len(prompts):,} pairs asked (a pair "
        "that two rows both propose is asked once)",
    )
    return OperatorPlan("dedupe", (step,), notes)


OPERATORS = {"dedupe": Operator("dedupe", dedupe, adedupe)}
