"""`runtime.agg(df, "Summarise the main complaints", by="region")`: one answer per group.

Each row is shown as `on` (a map template; by default every column but the group's, as
`column: value`). A group whose rows fit in `context_chars` is one call: the instruction
and its rows. A larger group is folded: its rows are cut into parts that fit, each part
answered on its own (map), then the parts' answers are combined (reduce), in parts again
if they are still too long, until one answer is left. Every level is one round (one map
run over the parts of all groups at that level), so the cache, resume, budgets and cancel
of map apply to each part.

The result has one row per group (index: the group's key) with `reply`, `rows` (the
group's size), `levels` (1: no fold), `calls` and `error` (why there is no reply, or which
parts of a fold failed: their rows are missing from the answer).
`attrs["agentrt"].details["fold"]` has, per group, the number of parts at each level (e.g.
`[12, 2, 1]`: 12 parts, their 12 answers combined in 2 calls, those 2 in 1).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any

import pandas as pd

from ..errors import InvalidConfig
from ..operators import Operator
from ..runtime import AgentRuntime
from .engine import check_runtime
from .explain import OperatorPlan
from .rounds import (
    Ask,
    Rounds,
    RoundsCall,
    arun_call,
    price_round,
    row_texts,
    run_call,
)

DEFAULT_CONTEXT_CHARS = 24_000
"""About 6,000 tokens of rows per call (at 4 characters a token): small models' contexts."""
ROWS = "{instruction}\n\nThe rows ({count}):\n{items}"
PART = (
    "{instruction}\n\nThis is part {part} of {parts} of the rows ({count} rows); answer "
    "for this part only: the answers of all parts will be combined.\n\nThe rows:\n{items}"
)
COMBINE = (
    "{instruction}\n\nThe rows were answered in parts; combine these answers of the parts "
    "into one answer.\n\n{items}"
)
COMBINE_PART = (
    "{instruction}\n\nThe rows were answered in parts; combine these {count} answers "
    "(group {part} of {parts} of the answers) into one: it will be combined with the "
    "others.\n\n{items}"
)


def parts(texts: list[str], limit: int, *, least: int = 1) -> list[list[str]]:
    """`texts` in order, cut into runs whose total length fits `limit` (a text longer
    than the limit is a part alone), each of at least `least` texts (combining levels
    take two at least, so every level has fewer parts than the one before)."""
    cut: list[list[str]] = []
    size = 0
    for text in texts:
        if cut and (size + len(text) + 3 <= limit or len(cut[-1]) < least):
            cut[-1].append(text)
            size += len(text) + 3
        else:
            cut.append([text])
            size = len(text) + 3
    return cut


def _bullets(texts: list[str]) -> str:
    return "\n".join(f"- {text}" for text in texts)


def _answers(texts: list[str]) -> str:
    return "\n\n".join(f"Answer {n}:\n{text}" for n, text in enumerate(texts, 1))


class _Group:
    """One group's fold: what is left to combine, the parts at each level."""

    def __init__(self, key: Hashable, texts: list[str]) -> None:
        self.key = key
        self.rows = len(texts)
        self.level = 0
        self.pending = texts
        self.fold: list[int] = []
        self.calls = 0
        self.reply: str | None = None
        self.error: str | None = None

    def prompts(self, instruction: str, limit: int) -> list[str]:
        """This level's prompts (one if it is the last)."""
        if self.level == 0:
            cut = parts(self.pending, limit)
            if len(cut) == 1:
                return [
                    ROWS.format(instruction=instruction, count=self.rows, items=_bullets(cut[0]))
                ]
            return [
                PART.format(
                    instruction=instruction,
                    part=n,
                    parts=len(cut),
                    count=len(part),
                    items=_bullets(part),
                )
                for n, part in enumerate(cut, 1)
            ]
        cut = parts(self.pending, limit, least=2)
        if len(cut) == 1:
            return [COMBINE.format(instruction=instruction, items=_answers(cut[0]))]
        return [
            COMBINE_PART.format(
                instruction=instruction,
                count=len(part),
                part=n,
                parts=len(cut),
                items=_answers(part),
            )
            for n, part in enumerate(cut, 1)
        ]

    def answered(self, replies: list[str | None], errors: list[str | None]) -> None:
        """One level's replies: the last level's is the answer; a part that failed is left
        out of the next level, and said in `error` (the answer then misses its rows)."""
        self.fold.append(len(replies))
        self.calls += len(replies)
        self.level += 1
        kept = [reply for reply in replies if reply is not None]
        failed = len(replies) - len(kept)
        if failed:
            first = next((e for e in errors if e), "no reply")
            self.error = f"{failed} of {len(replies)} parts failed at level {self.level}: {first}"
        if len(kept) <= 1:
            self.reply = kept[0] if kept else None
            self.pending = []
        else:
            self.pending = kept

    @property
    def done(self) -> bool:
        return not self.pending


def agg_rounds(
    groups: list[_Group], instruction: str, limit: int, names: list[str]
) -> Rounds[pd.DataFrame]:
    """Fold every group level by level, one round per level."""
    while open_groups := [g for g in groups if not g.done]:
        asked = [(g, g.prompts(instruction, limit)) for g in open_groups]
        prompts = [prompt for _, group_prompts in asked for prompt in group_prompts]
        level = max(g.level for g in open_groups)
        result = yield Ask(prompts, None, "rows" if level == 0 else f"combine {level}", None)
        replies = [None if pd.isna(r) else str(r) for r in result["reply"].tolist()]
        errors = [None if pd.isna(e) else str(e) for e in result["error"].tolist()]
        start = 0
        for group, group_prompts in asked:
            end = start + len(group_prompts)
            group.answered(replies[start:end], errors[start:end])
            start = end
    return _frame(groups, names)


def _frame(groups: list[_Group], names: list[str]) -> pd.DataFrame:
    keys = [g.key for g in groups]
    if len(names) > 1:
        index = pd.MultiIndex.from_tuples(keys, names=names)
    else:
        index = pd.Index(keys, name=names[0] if names else None)
    frame = pd.DataFrame(
        {
            "reply": pd.array([g.reply for g in groups], dtype="string"),
            "rows": pd.array([g.rows for g in groups], dtype="Int64"),
            "levels": pd.array([len(g.fold) for g in groups], dtype="Int64"),
            "calls": pd.array([g.calls for g in groups], dtype="Int64"),
            "error": pd.array([g.error for g in groups], dtype="string"),
        },
        index=index,
    )
    frame.attrs["fold"] = {g.key: list(g.fold) for g in groups}
    return frame


def _groups(
    runtime: AgentRuntime, frame: object, by: object, on: object
) -> tuple[list[_Group], list[str]]:
    if not isinstance(frame, pd.DataFrame):
        raise InvalidConfig(
            f"expected a pandas DataFrame, got {type(frame).__name__}", field="frame"
        )
    names = [] if by is None else [by] if isinstance(by, str) else by
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidConfig("must be a column name, a list of them, or None", field="by")
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise InvalidConfig(f"no column {missing[0]!r} in the frame", field="by")
    template = on if on is not None else _every_column(frame, names)
    texts = row_texts(runtime, frame, template, "on")
    if not names:
        return ([_Group(0, texts)] if texts else []), []
    positions = frame.reset_index(drop=True).groupby(names, sort=True, dropna=False).indices
    groups = []
    for key, rows in positions.items():
        group_key = key if len(names) > 1 or not isinstance(key, tuple) else key[0]
        groups.append(_Group(group_key, [texts[i] for i in rows]))
    return groups, names


def _every_column(frame: pd.DataFrame, skipped: list[str]) -> str:
    columns = [c for c in frame.columns if isinstance(c, str) and c not in skipped]
    if not columns:
        raise InvalidConfig("the frame has no column to show: pass on='{column}'", field="on")
    return "; ".join(f"{c}: {{{c}}}" for c in columns)


def _limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 100:
        raise InvalidConfig(f"must be an integer >= 100, got {value!r:.40}", field="context_chars")
    return value


def _prepare(
    runtime: object,
    frame: object,
    instruction: object,
    by: object,
    on: object,
    context_chars: object,
) -> tuple[AgentRuntime, list[_Group], list[str], str, int]:
    checked = check_runtime(runtime)
    if not isinstance(instruction, str) or not instruction.strip():
        raise InvalidConfig("must be a non-empty string", field="instruction")
    groups, names = _groups(checked, frame, by, on)
    return checked, groups, names, instruction, _limit(context_chars)


def _call(
    runtime: object, frame: object, instruction: object, by: object, on: object, chars: object
) -> RoundsCall:
    checked, groups, names, text, limit = _prepare(runtime, frame, instruction, by, on, chars)
    price = functools.partial(_explain, checked, groups, text, limit)
    rounds = agg_rounds(groups, text, limit, names)
    return RoundsCall(checked, "agg", rounds, price, finish=_with_fold)


def _with_fold(result: pd.DataFrame) -> pd.DataFrame:
    result.attrs["agentrt"].details["fold"] = result.attrs.pop("fold", {})
    return result


def agg(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    instruction: str,
    /,
    *,
    by: str | list[str] | None = None,
    on: str | None = None,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
    **options: Any,
) -> Any:
    """One answer to `instruction` per group of `by`; see the module docstring.
    `options` are map's; `explain=True` returns the plan instead."""
    return run_call(_call(runtime, frame, instruction, by, on, context_chars), options)


async def aagg(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    instruction: str,
    /,
    *,
    by: str | list[str] | None = None,
    on: str | None = None,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
    **options: Any,
) -> Any:
    """`agg` for an event loop."""
    return await arun_call(_call(runtime, frame, instruction, by, on, context_chars), options)


def _explain(
    runtime: AgentRuntime,
    groups: list[_Group],
    instruction: str,
    limit: int,
    options: dict[str, Any],
) -> OperatorPlan:
    """The first level priced exactly; the combining levels as a note (their prompts are
    the first level's answers)."""
    prompts = [p for g in groups for p in g.prompts(instruction, limit)]
    step = price_round(runtime, Ask(prompts, None, "rows", None), options)
    folded = sum(1 for g in groups if len(g.prompts(instruction, limit)) > 1)
    notes = [f"{len(groups):,} groups; {folded:,} longer than context_chars={limit:,}"]
    if folded:
        notes.append("each folded group adds combining calls (about one per 10 parts)")
    return OperatorPlan("agg", (step,), tuple(notes))


OPERATORS = {"agg": Operator("agg", agg, aagg)}
