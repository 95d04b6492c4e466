"""Operators made of rounds: topk, join, agg and dedupe, written once for both facades.

Such an operator is a generator. It yields what it needs next — `Ask` (prompts to answer,
as one map run over a frame of prompts, so the map engine's cache, quota-aware
concurrency, resume, budgets, progress and cancel all apply) or `Embed` (texts to embed,
`runtime.embed_texts`) — and gets the answer back. `drive` runs it with blocking calls
(as `runtime.map`), `adrive` awaiting (as `runtime.aio.map`): one implementation, two
drivers. (`operation.py` drives filter/classify/extract on the same loop, `run_steps`,
with map runs only; these operators also embed, spend one budget over many rounds, and
stop on a round left unanswered.)

Every round of one call shares the caller's map options; `budget_tokens` / `budget_usd`
are the whole operator's, each round getting what is left. A round that leaves rows
cancelled or skipped stops the operator with `OperatorStopped` (the answered rows are
kept: calling it again sends only the rest), and so does a round whose every row failed
(a model that refuses the question, say); a row whose reply did not parse is that
comparison's error, counted in the summary (`RoundsSummary.failed`) and read as "no".
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, TypeVar

import numpy as np
import pandas as pd

from ..errors import InvalidConfig, OperatorStopped, WrongThread
from ..runtime import AgentRuntime
from .engine import explain_map
from .explain import OperatorPlan, PlanStep, aconfirm_plan, confirm_plan, pop_explain
from .operation import MapCall, arun_steps, run_steps, start_call
from .plan import plan_map, positive_or_none
from .progress import Listener
from .run import BatchRun

PROMPT = "prompt"
"""The one column of a round's frame; the round's template is `{prompt}`."""
T = TypeVar("T")


SHOWN_ROUND_ROWS = 20
"""Rounds smaller than this show no widget or bar of their own (see `Driver.progress_of`)."""
YES_NO_TOKENS = 8
"""About the tokens of a one-field JSON reply (a yes/no), for plans."""


@dataclass(frozen=True)
class Ask:
    """Answer each of `prompts` (one map row each); `schema` as map's; `step` names the
    round in plans and summaries; `reply_tokens` the expected length of one reply, for
    plans (None: the engine's guess)."""

    prompts: list[str]
    schema: object
    step: str
    reply_tokens: int | None = YES_NO_TOKENS


@dataclass(frozen=True)
class Embed:
    """Embed each of `texts`; the answer is a float32 matrix, one row per text."""

    texts: list[str]


Need: TypeAlias = Ask | Embed
Rounds: TypeAlias = Generator[Need, Any, T]


@dataclass
class RoundsSummary:
    """What an operator did: maps run, prompts asked (`calls`: rows sent to a model now,
    `cached`: rows answered before), HTTP requests, tokens, failed rows, and embeddings
    (texts, calls made, texts found in the cache)."""

    operator: str
    rounds: int = 0
    calls: int = 0
    cached: int = 0
    requests: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    embedded: int = 0
    embed_calls: int = 0
    embed_cached: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    """What the operator adds: topk's bound, join's candidates and recall knob, agg's fold."""

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.details.items())
        return (
            f"<{self.operator}: {self.rounds} rounds, {self.calls:,} calls, {self.cached:,} "
            f"cached, {self.requests:,} requests, {self.failed:,} failed, "
            f"{self.embedded:,} texts embedded in {self.embed_calls:,} calls{extra}>"
        )


class Driver:
    """Answers an operator's needs: the map options for every round, the budgets left."""

    def __init__(
        self,
        runtime: AgentRuntime,
        name: str,
        options: dict[str, Any],
        details: dict[str, Any] | None = None,
    ) -> None:
        self.runtime = runtime
        self.summary = RoundsSummary(name, details=dict(details or {}))
        self.embedding_model: str | None = options.pop("embedding_model", None)
        self.progress: bool | Listener | None = options.pop("progress", None)
        self._budget_tokens = positive_or_none("budget_tokens", options.pop("budget_tokens", None))
        self._budget_usd = positive_or_none("budget_usd", options.pop("budget_usd", None))
        for name_ in ("schema", "explain", "dry_run"):
            if name_ in options:
                raise InvalidConfig(f"{name} sets its own {name_}", field=name_)
        self.options = options

    @property
    def embed_options(self) -> dict[str, Any]:
        """`embed_texts`'s options: `embedding_model=`, and map's `refresh`."""
        return {"model": self.embedding_model, "refresh": self.options.get("refresh", False)}

    def progress_of(self, ask: Ask) -> bool | Listener | None:
        """How a round shows its progress: a listener hears every round; a widget or bar
        is shown for rounds of `SHOWN_ROUND_ROWS` rows or more (a topk makes dozens of
        rounds of a few rows: Ctrl-C and `%agent cancel` still stop those)."""
        if callable(self.progress) or self.progress is False:
            return self.progress
        return self.progress if len(ask.prompts) >= SHOWN_ROUND_ROWS else False

    def round_options(self, ask: Ask) -> dict[str, Any]:
        """The map options of one round: the caller's, with the budgets left."""
        options = dict(self.options, schema=ask.schema)
        spent = self.summary
        if self._budget_tokens is not None:
            left = int(self._budget_tokens - spent.tokens_in - spent.tokens_out)
            if left < 1:
                raise OperatorStopped(f"{spent.operator} stopped: budget_tokens is spent")
            options["budget_tokens"] = left
        if self._budget_usd is not None:
            left_usd = self._budget_usd - (spent.cost_usd or 0.0)
            if left_usd <= 0:
                raise OperatorStopped(f"{spent.operator} stopped: budget_usd is spent")
            options["budget_usd"] = left_usd
        return options

    def answered(self, ask: Ask, result: pd.DataFrame) -> pd.DataFrame:
        """Count a round's result; `OperatorStopped` if rows were left unanswered."""
        progress = result.attrs["agentrt"]
        summary = self.summary
        summary.rounds += 1
        summary.calls += progress.ok + progress.failed
        summary.cached += progress.cached
        summary.failed += progress.failed
        summary.requests += int(result["attempts"].sum())
        summary.tokens_in += progress.tokens_in
        summary.tokens_out += progress.tokens_out
        if progress.cost_usd is not None:
            summary.cost_usd = (summary.cost_usd or 0.0) + progress.cost_usd
        if progress.total and progress.failed == progress.total:
            first = progress.errors[0].message if progress.errors else "no reply parsed"
            raise OperatorStopped(
                f"{summary.operator} stopped: every row of its {ask.step} round failed, "
                f"the first with: {first}",
                progress=progress,
            )
        if progress.cancelled or progress.skipped:
            why = progress.stop_reason or progress.state
            raise OperatorStopped(
                f"{summary.operator} stopped in its {ask.step} round ({why}): "
                f"{progress.ok + progress.cached:,} of {progress.total:,} rows are answered "
                "and kept; call it again to do the rest",
                progress=progress,
            )
        return result

    def embedded(self, texts: Sequence[str], found: Any) -> np.ndarray:
        self.summary.embedded += len(texts)
        self.summary.embed_calls += found.calls
        self.summary.embed_cached += found.cached
        if not found.vectors:
            return np.zeros((0, 0), dtype=np.float32)
        return np.asarray(found.vectors, dtype=np.float32)

    def answer(self, need: Need) -> Any:
        """A need's answer, waited for here (Ctrl-C cancels the round and re-raises)."""
        if isinstance(need, Embed):
            found = self.runtime.embed_texts(need.texts, **self.embed_options)
            return self.embedded(need.texts, found)
        return self.answered(need, self._start(need).result())

    async def aanswer(self, need: Need) -> Any:
        """`answer` for an event loop (cancelling the awaiting task cancels the round)."""
        if isinstance(need, Embed):
            found = await self.runtime.aio.embed_texts(need.texts, **self.embed_options)
            return self.embedded(need.texts, found)
        return self.answered(need, await self._start(need).aresult())

    def _start(self, ask: Ask) -> BatchRun:
        """The round's map run over its prompts, started, its progress shown."""
        call = MapCall(_prompts_frame(ask), "{prompt}", self.round_options(ask))
        return start_call(self.runtime, call, self.progress_of(ask))


def drive(
    runtime: AgentRuntime,
    name: str,
    rounds: Rounds[T],
    options: dict[str, Any],
    details: dict[str, Any] | None = None,
    plan: Callable[[], OperatorPlan] | None = None,
) -> T:
    """Run `rounds` with blocking calls (Ctrl-C cancels the round and re-raises); the
    summary, with `details`, goes on the value's `attrs["agentrt"]`. In a notebook, an
    operator whose `plan()` passes `confirm_cost` asks first, once (see `explain`)."""
    if threading.current_thread() is runtime.thread:
        raise WrongThread(f"{name} would deadlock on the runtime thread: await runtime.aio.{name}")
    if plan is not None:
        confirm_plan(plan)
    driver = Driver(runtime, name, options, details)
    return _with_summary(run_steps(rounds, driver.answer), driver)


async def adrive(
    runtime: AgentRuntime,
    name: str,
    rounds: Rounds[T],
    options: dict[str, Any],
    details: dict[str, Any] | None = None,
    plan: Callable[[], OperatorPlan] | None = None,
) -> T:
    """`drive` for an event loop (cancelling the awaiting task cancels the round)."""
    if plan is not None:
        await aconfirm_plan(plan)
    driver = Driver(runtime, name, options, details)
    return _with_summary(await arun_steps(rounds, driver.aanswer), driver)


@dataclass(frozen=True)
class RoundsCall:
    """One call of an operator, its arguments checked: the `rounds` to drive, the
    summary's `details`, `price(options)` (the plan `explain=True` returns and a notebook's
    cost gate is shown) and `finish`, what the driven value becomes."""

    runtime: AgentRuntime
    name: str
    rounds: Rounds[Any]
    price: Callable[[dict[str, Any]], OperatorPlan]
    details: dict[str, Any] | None = None
    finish: Callable[[Any], Any] = lambda value: value


def run_call(call: RoundsCall, options: dict[str, Any]) -> Any:
    """`call` driven with blocking calls (`drive`), or its plan with `explain=True`."""
    if pop_explain(options):
        return call.price(options)
    plan = functools.partial(call.price, dict(options))
    return call.finish(drive(call.runtime, call.name, call.rounds, options, call.details, plan))


async def arun_call(call: RoundsCall, options: dict[str, Any]) -> Any:
    """`run_call` for an event loop."""
    if pop_explain(options):
        return call.price(options)
    plan = functools.partial(call.price, dict(options))
    value = await adrive(call.runtime, call.name, call.rounds, options, call.details, plan)
    return call.finish(value)


def row_texts(runtime: AgentRuntime, frame: object, template: object, field: str) -> list[str]:
    """`template` filled from each row of `frame` (as map fills it); `InvalidConfig` names
    the option (`field`) for a template that does not fit, or a row it cannot fill."""
    try:
        plan = plan_map(runtime.config, frame, template)
    except InvalidConfig as exc:
        raise InvalidConfig(str(exc), field=field) from None
    assert isinstance(frame, pd.DataFrame)
    texts = []
    for position, text, problem in plan.prompts(frame):
        if text is None:
            raise InvalidConfig(f"row {position} cannot be filled in: {problem}", field=field)
        texts.append(text)
    return texts


def _with_summary(value: T, driver: Driver) -> T:
    attrs = getattr(value, "attrs", None)
    if isinstance(attrs, dict):
        attrs["agentrt"] = driver.summary
    return value


def price_round(runtime: AgentRuntime, ask: Ask, options: dict[str, Any]) -> PlanStep:
    """The plan step of one round (`explain=True`), rows answered before counted as cached;
    nothing is sent."""
    frame = _prompts_frame(ask)
    round_options = {k: v for k, v in options.items() if k not in ("embedding_model", "progress")}
    plan = explain_map(
        runtime, frame, "{prompt}", step=ask.step, reply_tokens=ask.reply_tokens, schema=ask.schema,
        **round_options,
    )  # fmt: skip
    return plan.steps[0]


def expected_step(
    runtime: AgentRuntime, ask: Ask, options: dict[str, Any], expected: int
) -> PlanStep:
    """A plan step of `expected` calls like `ask`'s prompts (priced by them, the share of
    them answered before counted as cached): for rounds whose later prompts depend on
    the answers."""
    if not ask.prompts:
        return PlanStep(f"{ask.step} (expected)", "", 0, 0, 0, 0, 0.0)
    full = price_round(runtime, ask, dict(options, refresh=True))
    kept = price_round(runtime, ask, options)
    share = expected / len(ask.prompts)
    cached = round(expected * kept.cached_calls / len(ask.prompts))
    step = full.scaled(share, name=f"{ask.step} (expected)")
    live = (expected - cached) / expected if expected else 0.0
    return replace(step.scaled(live), name=step.name, calls=expected - cached, cached_calls=cached)


def _prompts_frame(ask: Ask) -> pd.DataFrame:
    """A round's frame: its prompts in the one column `PROMPT`."""
    return pd.DataFrame({PROMPT: pd.array(ask.prompts, dtype=object)})
