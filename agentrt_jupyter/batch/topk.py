"""`runtime.topk(df, "most urgent for support", k=10, by="{text}")`: the k best rows, best
first, by model comparisons — a tournament, not a sort.

The rows play a knock-out tournament: each round pairs the rows still in and asks the
model, for every pair at once (one map run), which of the two fits the criterion better;
the winners go on. Its winner is the best row. The next best can only be a row that lost
to a row already chosen (every other row lost to a row that beats it), so each next pick
is a small tournament among the rows whose every recorded defeat was by a chosen row.
A pair is never asked twice.

Calls: n - 1 for the first tournament, then about log2 n for each next pick (measured in
`bench/bench_operators.py`: 1,098 in 47 rounds for n = 1,000 and k = 10, where a merge
sort of the same rows made 8,624 comparisons). Never more than n - 1 + L (k^3 - k) / 6
with L = ceil(log2 n): a row wins at most L games in each tournament it plays, the rows a
pick may come from are those the chosen rows beat, and a tournament among m rows asks
m - 1 pairs. `max_calls` (default: that bound) stops the operator (`OperatorStopped`)
before a round that would pass it. The summary (`result.attrs["agentrt"]`) counts
comparisons, requests and rounds.

A comparison whose reply does not parse counts as "the second row is better" and is
counted in `failed`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..errors import InvalidConfig, OperatorStopped
from ..operators import Operator
from ..runtime import AgentRuntime
from .engine import check_runtime
from .explain import OperatorPlan
from .rounds import (
    Ask,
    Rounds,
    RoundsCall,
    arun_call,
    expected_step,
    row_texts,
    run_call,
)
from .schema import yes_no_schema

FIELD = "first_is_better"
SCHEMA = yes_no_schema(FIELD)
PROMPT = (
    "Compare two items by this criterion: {criterion}\n"
    'Answer with JSON {{"first_is_better": true}} if the first item fits the criterion '
    'better than the second, else {{"first_is_better": false}}.\n\n'
    "First item:\n{first}\n\nSecond item:\n{second}"
)


def default_max_calls(n: int, k: int) -> int:
    """The most comparisons a topk of k among n rows can make (see the module docstring)."""
    wins = math.ceil(math.log2(max(n, 2)))
    return max(0, n - 1) + wins * (k**3 - k) // 6


class Tournament:
    """The comparisons asked so far and the picks made; pure (no I/O), so testable alone."""

    def __init__(self, texts: Sequence[str], criterion: str) -> None:
        self.texts = texts
        self.criterion = criterion
        self.beats: dict[tuple[int, int], bool] = {}
        """(a, b) -> whether a beat b, for every pair asked (both orders)."""
        self.defeated_by: dict[int, set[int]] = {i: set() for i in range(len(texts))}

    def prompt(self, pair: tuple[int, int]) -> str:
        first, second = pair
        return PROMPT.format(
            criterion=self.criterion, first=self.texts[first], second=self.texts[second]
        )

    def record(self, pair: tuple[int, int], first_wins: bool) -> None:
        first, second = pair
        winner, loser = (first, second) if first_wins else (second, first)
        self.beats[(winner, loser)] = True
        self.beats[(loser, winner)] = False
        self.defeated_by[loser].add(winner)

    def unknown(self, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return [pair for pair in pairs if pair not in self.beats]

    def winners(self, pairs: list[tuple[int, int]]) -> list[int]:
        return [a if self.beats[(a, b)] else b for a, b in pairs]

    def eligible(self, chosen: set[int]) -> list[int]:
        """The rows not chosen whose every defeat was by a chosen row, in order. (Answers
        that contradict each other can leave none: then those beaten by the fewest rows
        not chosen.)"""
        left = {row: by - chosen for row, by in self.defeated_by.items() if row not in chosen}
        if not left:
            return []
        fewest = min(len(by) for by in left.values())
        return [row for row, by in left.items() if len(by) == fewest]


def topk_rounds(texts: Sequence[str], criterion: str, k: int, max_calls: int) -> Rounds[list[int]]:
    """The positions of the k best rows, best first (a generator of `Ask`s)."""
    board = Tournament(texts, criterion)
    asked = 0
    chosen: list[int] = []
    players = list(range(len(texts)))
    while len(chosen) < min(k, len(texts)):
        while len(players) > 1:
            pairs = [(players[i], players[i + 1]) for i in range(0, len(players) - 1, 2)]
            bye = [players[-1]] if len(players) % 2 else []
            todo = board.unknown(pairs)
            if todo:
                asked += len(todo)
                if asked > max_calls:
                    raise OperatorStopped(
                        f"topk stopped at max_calls={max_calls}: the model's comparisons "
                        "contradict each other (raise max_calls to go on)"
                    )
                result = yield Ask([board.prompt(pair) for pair in todo], SCHEMA, "compare")
                answers = result[FIELD].tolist()
                for pair, answer in zip(todo, answers, strict=True):
                    board.record(pair, answer is True)
            players = board.winners(pairs) + bye
        chosen.append(players[0])
        players = board.eligible(set(chosen))
    return chosen


def _options(frame: object, k: object, max_calls: object) -> tuple[int, int]:
    if not isinstance(frame, pd.DataFrame):
        raise InvalidConfig(
            f"expected a pandas DataFrame, got {type(frame).__name__}", field="frame"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidConfig(f"must be a positive integer, got {k!r:.40}", field="k")
    bound = default_max_calls(len(frame), k) if max_calls is None else max_calls
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
        raise InvalidConfig(f"must be an integer >= 0, got {bound!r:.40}", field="max_calls")
    return k, bound


def _check_criterion(criterion: object) -> str:
    if not isinstance(criterion, str) or not criterion.strip():
        raise InvalidConfig("must be a non-empty string", field="criterion")
    return criterion


def _prepare(
    runtime: object, frame: object, criterion: object, k: object, by: object, max_calls: object
) -> tuple[AgentRuntime, list[str], str, int, int]:
    checked = check_runtime(runtime)
    count, bound = _options(frame, k, max_calls)
    text = _check_criterion(criterion)
    return checked, row_texts(checked, frame, by, "by"), text, count, bound


def _call(
    runtime: object,
    frame: pd.DataFrame,
    criterion: object,
    k: object,
    by: object,
    max_calls: object,
) -> RoundsCall:
    checked, texts, text, count, bound = _prepare(runtime, frame, criterion, k, by, max_calls)
    price = functools.partial(_explain, checked, texts, text, count, bound)
    rounds = _as_frame(frame, texts, text, count, bound)
    return RoundsCall(checked, "topk", rounds, price, {"k": count, "max_calls": bound})


def topk(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    criterion: str,
    /,
    *,
    k: int = 10,
    by: str,
    max_calls: int | None = None,
    **options: Any,
) -> Any:
    """The k rows of `frame` that fit `criterion` best, best first (`by`: the template
    each row is shown as, `{column}` as map's); `options` are map's (model, concurrency,
    budgets, progress, key, ...). `explain=True` returns the plan instead."""
    return run_call(_call(runtime, frame, criterion, k, by, max_calls), options)


async def atopk(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    criterion: str,
    /,
    *,
    k: int = 10,
    by: str,
    max_calls: int | None = None,
    **options: Any,
) -> Any:
    """`topk` for an event loop."""
    return await arun_call(_call(runtime, frame, criterion, k, by, max_calls), options)


def _as_frame(
    frame: pd.DataFrame, texts: list[str], criterion: str, k: int, bound: int
) -> Rounds[pd.DataFrame]:
    """`topk_rounds` whose value is the result frame (the drivers put the summary on it)."""
    positions = yield from topk_rounds(texts, criterion, k, bound)
    result = frame.iloc[positions].copy()
    result.attrs = {}
    return result


def _explain(
    runtime: AgentRuntime,
    texts: list[str],
    criterion: str,
    k: int,
    bound: int,
    options: dict[str, Any],
) -> OperatorPlan:
    """The first round's comparisons priced exactly, the rest as the expected share."""
    board = Tournament(texts, criterion)
    first = [(i, i + 1) for i in range(0, len(texts) - 1, 2)]
    if not first:
        return OperatorPlan("topk", (), ("fewer than two rows: nothing to compare",))
    ask = Ask([board.prompt(p) for p in first], SCHEMA, "compare")
    n = len(texts)
    expected = n - 1 + (min(k, n) - 1) * math.ceil(math.log2(n))
    scaled = expected_step(runtime, ask, options, expected)
    notes = (
        f"the first round's {len(first):,} comparisons priced, {expected:,} expected in all "
        f"(n - 1 + (k - 1)·log2 n); never more than max_calls={bound:,}",
    )
    return OperatorPlan("topk", (scaled,), notes)


OPERATORS = {"topk": Operator("topk", topk, atopk)}
