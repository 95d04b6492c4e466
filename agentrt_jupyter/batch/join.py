"""Joins whose keys don't match exactly: `join` (embeddings propose, the model decides),
`sim_join` and `search` (embeddings alone).

`runtime.join(left, right, "{left.product} is the same item as {right.name}")` embeds
each side's rows (`left_on` / `right_on`, by default the columns the template names on
that side), takes for every left row the `candidates` right rows nearest by cosine, and
asks the model about those pairs only, one map row each, for a yes/no. `candidates` is
the knob between recall and calls: n_left * candidates calls instead of n_left * n_right
(`candidates=None` asks about every pair). With the local server's scripted embeddings
and 1,000 x 1,000 reworded rows, `candidates=1` found 96.7 % of the true matches with
0.1 % of the calls, `candidates=3` 99.9 % with 0.3 % (`bench/bench_operators.py`); real
embeddings of messier keys want more.

The result has one row per matched pair: `left_index`, `right_index`, the left row's
columns, the right row's (a name on both sides gets `_left` / `_right`), and
`similarity` (the pair's cosine). `attrs["agentrt"]` counts calls, candidates and matches.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidConfig
from ..operators import Operator
from ..runtime import AgentRuntime
from .engine import check_runtime
from .explain import OperatorPlan
from .rounds import (
    Ask,
    Embed,
    Rounds,
    RoundsCall,
    adrive,
    arun_call,
    drive,
    expected_step,
    row_texts,
    run_call,
)
from .schema import yes_no_schema

FIELD = "match"
SCHEMA = yes_no_schema(FIELD)
QUESTION = (
    "Does this statement hold? {statement}\n"
    'Answer with JSON {{"match": true}} if it does, else {{"match": false}}.'
)
DEFAULT_CANDIDATES = 5
BLOCK_ROWS = 1024
"""Left rows scored against the right side at once (bounds the similarity matrix)."""
_FORMATTER = string.Formatter()


class _Side(Mapping[str, Any]):
    """One row of one side in a template: `{left.product}` or `{left[product name]}`."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def nearest(queries: np.ndarray, keys: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the `count` key rows of highest cosine, best first: their
    positions and cosines (each an array of shape (queries, count))."""
    count = min(count, len(keys))
    q, k = _unit(queries), _unit(keys)
    positions = np.empty((len(q), count), dtype=np.int64)
    scores = np.empty((len(q), count), dtype=np.float32)
    for start in range(0, len(q), BLOCK_ROWS):
        sims = q[start : start + BLOCK_ROWS] @ k.T
        top = np.argpartition(-sims, count - 1, axis=1)[:, :count]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        positions[start : start + len(sims)] = np.take_along_axis(top, order, axis=1)
        scores[start : start + len(sims)] = np.take_along_axis(top_sims, order, axis=1)
    return positions, scores


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def side_columns(
    template: object, left: pd.DataFrame, right: pd.DataFrame
) -> tuple[list[str], list[str]]:
    """The columns `template` reads from each side; `InvalidConfig` for anything else."""
    if not isinstance(template, str) or not template.strip():
        raise InvalidConfig("must be a non-empty string", field="template")
    try:
        fields = [name for _, name, _, _ in _FORMATTER.parse(template) if name is not None]
    except ValueError as exc:
        raise InvalidConfig(
            f"{exc}: write {{{{ and }}}} for literal braces", field="template"
        ) from None
    used: dict[str, list[str]] = {"left": [], "right": []}
    frames = {"left": left, "right": right}
    for name in fields:
        side, _, rest = name.partition(".")
        if "[" in side:
            side, _, rest = name.partition("[")
            rest = rest.split("]", 1)[0]
        if side not in used or not rest:
            raise InvalidConfig(
                f"{{{name}}}: name each column with its side, {{left.column}} or {{right.column}}",
                field="template",
            )
        column = rest.split(".", 1)[0].split("[", 1)[0]
        if column not in frames[side].columns:
            raise InvalidConfig(
                f"{{{name}}}: the {side} frame has no column {column!r}", field="template"
            )
        if column not in used[side]:
            used[side].append(column)
    if not used["left"] or not used["right"]:
        raise InvalidConfig("the template must name a column of each side", field="template")
    return used["left"], used["right"]


def _default_on(columns: list[str]) -> str:
    return " ".join(f"{{{column}}}" for column in columns)


def _frames(left: object, right: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    for name, frame in (("left", left), ("right", right)):
        if not isinstance(frame, pd.DataFrame):
            raise InvalidConfig(
                f"expected a pandas DataFrame, got {type(frame).__name__}", field=name
            )
    assert isinstance(left, pd.DataFrame) and isinstance(right, pd.DataFrame)
    return left, right


def _count(value: object, name: str, *, none_ok: bool = False) -> int | None:
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfig(f"must be a positive integer, got {value!r:.40}", field=name)
    return value


class _JoinPlan:
    """A checked join: the texts each side is embedded by, the statement per pair."""

    def __init__(
        self,
        runtime: AgentRuntime,
        left: pd.DataFrame,
        right: pd.DataFrame,
        template: str,
        candidates: int | None,
        left_on: str | None,
        right_on: str | None,
    ) -> None:
        left_columns, right_columns = side_columns(template, left, right)
        self.left, self.right, self.template = left, right, template
        self.candidates = candidates
        self.blocking = candidates is not None and candidates < len(right)
        on_left = left_on if left_on is not None else _default_on(left_columns)
        on_right = right_on if right_on is not None else _default_on(right_columns)
        self.left_texts = row_texts(runtime, left, on_left, "left_on") if self.blocking else []
        self.right_texts = row_texts(runtime, right, on_right, "right_on") if self.blocking else []
        self._left_rows = left[left_columns].to_dict("records")
        self._right_rows = right[right_columns].to_dict("records")

    def prompt(self, pair: tuple[int, int]) -> str:
        i, j = pair
        sides = {"left": _Side(self._left_rows[i]), "right": _Side(self._right_rows[j])}
        try:
            statement = self.template.format_map(sides)
        except (KeyError, AttributeError, IndexError, ValueError, TypeError) as exc:
            raise InvalidConfig(
                f"cannot fill the template for pair {pair}: {exc}", field="template"
            ) from None
        return QUESTION.format(statement=statement)

    def all_pairs(self) -> tuple[list[tuple[int, int]], list[float]]:
        pairs = [(i, j) for i in range(len(self.left)) for j in range(len(self.right))]
        return pairs, [float("nan")] * len(pairs)


def join_rounds(plan: _JoinPlan) -> Rounds[pd.DataFrame]:
    """Embed both sides (if blocking), ask about the candidate pairs, keep the matches."""
    if plan.blocking and len(plan.left) and len(plan.right):
        left_vectors = yield Embed(plan.left_texts)
        right_vectors = yield Embed(plan.right_texts)
        assert plan.candidates is not None
        positions, scores = nearest(left_vectors, right_vectors, plan.candidates)
        pairs = [(i, int(j)) for i in range(len(positions)) for j in positions[i]]
        similarity = [float(s) for row in scores for s in row]
    else:
        pairs, similarity = plan.all_pairs()
    matched: list[int] = []
    if pairs:
        answers = yield Ask([plan.prompt(pair) for pair in pairs], SCHEMA, "match")
        matched = [n for n, answer in enumerate(answers[FIELD].tolist()) if answer is True]
    frame = _pairs_frame(
        plan.left, plan.right, [pairs[n] for n in matched], [similarity[n] for n in matched]
    )
    frame.attrs["pairs_checked"] = len(pairs)
    return frame


def _pairs_frame(
    left: pd.DataFrame, right: pd.DataFrame, pairs: list[tuple[int, int]], similarity: list[float]
) -> pd.DataFrame:
    rows_left = [i for i, _ in pairs]
    rows_right = [j for _, j in pairs]
    ours = left.iloc[rows_left].reset_index(drop=True)
    theirs = right.iloc[rows_right].reset_index(drop=True)
    both = set(ours.columns) & set(theirs.columns)
    ours = ours.rename(columns={c: f"{c}_left" for c in both})
    theirs = theirs.rename(columns={c: f"{c}_right" for c in both})
    keys = pd.DataFrame(
        {"left_index": left.index[rows_left], "right_index": right.index[rows_right]}
    )
    result = pd.concat([keys, ours, theirs], axis=1)
    result["similarity"] = pd.array(similarity, dtype="Float64")
    return result


def _join_plan(
    runtime: object,
    left: object,
    right: object,
    template: object,
    candidates: object,
    left_on: str | None,
    right_on: str | None,
) -> tuple[AgentRuntime, _JoinPlan]:
    checked = check_runtime(runtime)
    frames = _frames(left, right)
    count = _count(candidates, "candidates", none_ok=True)
    if not isinstance(template, str):
        raise InvalidConfig("must be a non-empty string", field="template")
    return checked, _JoinPlan(checked, *frames, template, count, left_on, right_on)


def _call(
    runtime: object,
    left: object,
    right: object,
    template: object,
    candidates: object,
    left_on: str | None,
    right_on: str | None,
) -> RoundsCall:
    checked, plan = _join_plan(runtime, left, right, template, candidates, left_on, right_on)
    price = functools.partial(_explain, checked, plan)
    return RoundsCall(checked, "join", join_rounds(plan), price, _details(plan), _checked)


def _details(plan: _JoinPlan) -> dict[str, Any]:
    n, m = len(plan.left), len(plan.right)
    return {"candidates": plan.candidates, "all_pairs": n * m}


def join(
    runtime: AgentRuntime,
    left: pd.DataFrame,
    right: pd.DataFrame,
    template: str,
    /,
    *,
    candidates: int | None = DEFAULT_CANDIDATES,
    left_on: str | None = None,
    right_on: str | None = None,
    **options: Any,
) -> Any:
    """The pairs of rows for which the model says `template` holds; see the module
    docstring. `options` are map's; `embedding_model=` the model that embeds."""
    call = _call(runtime, left, right, template, candidates, left_on, right_on)
    return run_call(call, options)


async def ajoin(
    runtime: AgentRuntime,
    left: pd.DataFrame,
    right: pd.DataFrame,
    template: str,
    /,
    *,
    candidates: int | None = DEFAULT_CANDIDATES,
    left_on: str | None = None,
    right_on: str | None = None,
    **options: Any,
) -> Any:
    """`join` for an event loop."""
    call = _call(runtime, left, right, template, candidates, left_on, right_on)
    return await arun_call(call, options)


def _checked(result: pd.DataFrame) -> pd.DataFrame:
    """Move the pairs' count into the summary."""
    summary = result.attrs["agentrt"]
    summary.details["pairs_checked"] = result.attrs.pop("pairs_checked", 0)
    summary.details["matches"] = len(result)
    return result


def _explain(runtime: AgentRuntime, plan: _JoinPlan, options: dict[str, Any]) -> OperatorPlan:
    """Embedding calls and the pairs' yes/no calls (priced by stand-in pairs of the same
    rows: which pairs are candidates is known only once the rows are embedded)."""
    n, m = len(plan.left), len(plan.right)
    per_left = m if not plan.blocking or plan.candidates is None else plan.candidates
    sample = [(i, (i + j) % m) for i in range(n) for j in range(per_left)] if m else []
    ask = Ask([plan.prompt(pair) for pair in sample], SCHEMA, "match")
    step = expected_step(runtime, ask, options, len(sample))
    notes = [f"{len(sample):,} pairs asked of {n * m:,} (candidates={plan.candidates})"]
    if plan.blocking:
        notes.append(
            f"embeds {n + m:,} rows first (100 texts a call, cached per text); pairs asked "
            "before are not sent again, which only the run can tell"
        )
    return OperatorPlan("join", (step,), tuple(notes))


def embedding_only(options: dict[str, Any]) -> dict[str, Any]:
    """The options of an operator by embeddings alone: `model=` is the embedding model,
    `refresh=True` embeds again; `InvalidConfig` for any other but `progress`."""
    model = options.pop("model", options.pop("embedding_model", None))
    refresh = options.pop("refresh", False)
    options.pop("progress", None)
    if options:
        name = next(iter(options))
        raise InvalidConfig(f"takes model= (the embedding model), not {name}=", field=name)
    return {"embedding_model": model, "refresh": refresh}


def sim_join_rounds(
    left: pd.DataFrame,
    right: pd.DataFrame,
    left_texts: list[str],
    right_texts: list[str],
    k: int,
    threshold: float | None,
) -> Rounds[pd.DataFrame]:
    left_vectors = yield Embed(left_texts)
    right_vectors = yield Embed(right_texts)
    pairs: list[tuple[int, int]] = []
    similarity: list[float] = []
    if len(left) and len(right):
        positions, scores = nearest(left_vectors, right_vectors, k)
        for i in range(len(positions)):
            for j, score in zip(positions[i], scores[i], strict=True):
                if threshold is None or score >= threshold:
                    pairs.append((i, int(j)))
                    similarity.append(float(score))
    return _pairs_frame(left, right, pairs, similarity)


def _sim_join_args(
    runtime: object,
    left: object,
    right: object,
    on: str | None,
    left_on: str | None,
    right_on: str | None,
    k: object,
    threshold: object,
) -> tuple[AgentRuntime, Rounds[pd.DataFrame]]:
    checked = check_runtime(runtime)
    frames = _frames(left, right)
    count = _count(k, "k")
    assert count is not None
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float)
    ):
        raise InvalidConfig("must be a number (a cosine) or None", field="threshold")
    least = None if threshold is None else float(threshold)
    on_left, on_right = left_on or on, right_on or on
    if on_left is None or on_right is None:
        raise InvalidConfig("say what to embed: on='{name}', or left_on= and right_on=", field="on")
    left_texts = row_texts(checked, frames[0], on_left, "left_on")
    right_texts = row_texts(checked, frames[1], on_right, "right_on")
    rounds = sim_join_rounds(*frames, left_texts, right_texts, count, least)
    return checked, rounds


def sim_join(
    runtime: AgentRuntime,
    left: pd.DataFrame,
    right: pd.DataFrame,
    /,
    *,
    on: str | None = None,
    left_on: str | None = None,
    right_on: str | None = None,
    k: int = 1,
    threshold: float | None = None,
    **options: Any,
) -> Any:
    """Each left row's `k` nearest right rows by cosine (at least `threshold`), by
    embeddings alone: the pairs frame of `join`, no model judgement."""
    checked, rounds = _sim_join_args(runtime, left, right, on, left_on, right_on, k, threshold)
    return drive(checked, "sim_join", rounds, embedding_only(options))


async def asim_join(
    runtime: AgentRuntime,
    left: pd.DataFrame,
    right: pd.DataFrame,
    /,
    *,
    on: str | None = None,
    left_on: str | None = None,
    right_on: str | None = None,
    k: int = 1,
    threshold: float | None = None,
    **options: Any,
) -> Any:
    """`sim_join` for an event loop."""
    checked, rounds = _sim_join_args(runtime, left, right, on, left_on, right_on, k, threshold)
    return await adrive(checked, "sim_join", rounds, embedding_only(options))


def search_rounds(
    frame: pd.DataFrame, texts: list[str], query: str, k: int
) -> Rounds[pd.DataFrame]:
    if not len(frame):
        return frame.assign(similarity=pd.array([], dtype="Float64"))
    found = yield Embed([query, *texts])
    positions, scores = nearest(found[:1], found[1:], k)
    result = frame.iloc[positions[0]].copy()
    result.attrs = {}
    result["similarity"] = pd.array(scores[0], dtype="Float64")
    return result


def _search_args(
    runtime: object, frame: object, query: object, on: str | None, k: object
) -> tuple[AgentRuntime, Rounds[pd.DataFrame]]:
    checked = check_runtime(runtime)
    if not isinstance(query, str) or not query.strip():
        raise InvalidConfig("must be a non-empty string", field="query")
    count = _count(k, "k")
    assert count is not None
    if on is None:
        raise InvalidConfig("say what to embed of each row: on='{text}'", field="on")
    texts = row_texts(checked, frame, on, "on")
    assert isinstance(frame, pd.DataFrame)
    return checked, search_rounds(frame, texts, query, count)


def search(
    runtime: AgentRuntime, frame: pd.DataFrame, query: str, /, *, on: str | None = None,
    k: int = 10, **options: Any,
) -> Any:  # fmt: skip
    """The `k` rows of `frame` nearest to `query` (`on`: what each row is embedded as),
    nearest first, with their cosine in `similarity`."""
    checked, rounds = _search_args(runtime, frame, query, on, k)
    return drive(checked, "search", rounds, embedding_only(options))


async def asearch(
    runtime: AgentRuntime, frame: pd.DataFrame, query: str, /, *, on: str | None = None,
    k: int = 10, **options: Any,
) -> Any:  # fmt: skip
    """`search` for an event loop."""
    checked, rounds = _search_args(runtime, frame, query, on, k)
    return await adrive(checked, "search", rounds, embedding_only(options))


OPERATORS = {
    "join": Operator("join", join, ajoin),
    "sim_join": Operator("sim_join", sim_join, asim_join),
    "search": Operator("search", search, asearch),
}
