"""`runtime.embed(df, "{text}")`: an embedding vector per row.

The template is filled as map fills it; the texts go to `runtime.embed_texts` (up to 100
texts a call, every vector kept in the reply cache, a ledger row per call; see
`agentrt_jupyter.embedding`), so embedding the same texts again makes no request. The
result is a Series of float32 numpy arrays aligned with the frame's index, named
`embedding`; `attrs["agentrt"]` says the model, the calls made and the texts found in
the cache.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ..embedding import TEXTS_PER_CALL, EmbeddedTexts
from ..errors import InvalidConfig
from ..operators import Operator
from ..runtime import AgentRuntime
from .engine import check_runtime
from .explain import OperatorPlan, PlanStep, pop_explain
from .rounds import row_texts

NAME = "embedding"


def embed(runtime: AgentRuntime, frame: pd.DataFrame, template: str, /, **options: Any) -> Any:
    """A Series of vectors, one per row of `frame` (`template` as map's); `model=` the
    embedding model (default: the provider's, see `agentrt_jupyter.embedding`);
    `refresh=True` embeds again what the cache holds; `explain=True` returns the plan
    instead."""
    checked, texts, model = _prepare(runtime, frame, template, options)
    if pop_explain(options):
        return _explain(texts, model)
    refresh = options.pop("refresh", False)
    _no_more(options)
    return _series(frame, checked.embed_texts(texts, model=model, refresh=refresh))


async def aembed(
    runtime: AgentRuntime, frame: pd.DataFrame, template: str, /, **options: Any
) -> Any:
    """`embed` for an event loop."""
    checked, texts, model = _prepare(runtime, frame, template, options)
    if pop_explain(options):
        return _explain(texts, model)
    refresh = options.pop("refresh", False)
    _no_more(options)
    return _series(frame, await checked.aio.embed_texts(texts, model=model, refresh=refresh))


def vectors(found: EmbeddedTexts) -> np.ndarray:
    """The vectors as one float32 matrix, a row per text."""
    if not found.vectors:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(found.vectors, dtype=np.float32)


def _prepare(
    runtime: object, frame: object, template: object, options: dict[str, Any]
) -> tuple[AgentRuntime, list[str], str | None]:
    checked = check_runtime(runtime)
    texts = row_texts(checked, frame, template, "template")
    model = options.pop("model", None)
    options.pop("progress", None)  # one call per 100 rows: nothing to follow
    return checked, texts, model


def _no_more(options: dict[str, Any]) -> None:
    if options:
        name = next(iter(options))
        raise InvalidConfig(f"embed takes model=, explain= and progress=, not {name}=", field=name)


def _series(frame: pd.DataFrame, found: EmbeddedTexts) -> pd.Series:
    matrix = vectors(found)
    column = pd.Series(list(matrix), index=frame.index, name=NAME, dtype=object)
    column.attrs["agentrt"] = replace(found, vectors=[])
    return column


def _explain(texts: list[str], model: str | None) -> OperatorPlan:
    unique = len(set(texts))
    tokens = sum(math.ceil(len(text) / 4) for text in set(texts))
    step = PlanStep(
        name="embed",
        model=model or "(the provider's embedding model)",
        calls=math.ceil(unique / TEXTS_PER_CALL),
        cached_calls=0,
        tokens_in=tokens,
        tokens_out=0,
        usd=None,
    )
    notes = (
        f"{unique:,} distinct texts, {TEXTS_PER_CALL} a call; texts embedded before are "
        "read from the reply cache and sent again by none of these calls",
    )
    return OperatorPlan("embed", (step,), notes)


OPERATORS = {"embed": Operator("embed", embed, aembed)}
