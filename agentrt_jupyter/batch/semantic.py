"""Semantic operators: `filter`, `classify` and `extract`, a map with a structured reply.

Each asks one structured question per row on the map engine (`operation`), so each
keeps map's cache, quota-aware concurrency, resumable rows, budgets, progress, cancel
and `mode="batch"`, and takes map's options (model, concurrency, budget_tokens,
budget_usd, key, refresh, mode, rpm, tpm, store, system_instruction, ...):

- `filter(df, "The review {review} complains about delivery")`: the rows for which the
  model answers `{"match": true}`; `mask=True` gives the boolean Series instead.
- `classify(df, "{review}", labels=["praise", "complaint"])` (or an Enum): a categorical
  Series with exactly those categories; an answer outside them is that row's error
  (`<NA>`), never a new category.
- `extract(df, "{text}", schema=Model)`: one typed column per field (see `schema`).

A row without an answer (an error, a cancel, a budget stop) is excluded by `filter`,
`<NA>` in the others, and listed in `result.attrs["agentrt"]` (an `OperatorSummary`, with
the map run's final progress).

Cascades: with `escalate_to="strong-model"`, the rows are asked of `model` (the cheap
one) with a `confidence` field (0 to 1) added to the reply; rows answered below
`threshold`, and rows the cheap model failed (a reply not in the form asked, an error),
are asked again of the strong model, and its answers replace the cheap ones (a row the
strong model fails keeps the cheap answer). Where the cheap model's provider gives logprobs
(Gemini, Vertex, OpenAI; live runs), they are asked for, and a row's confidence is the
probability of its reply, exp(mean token logprob), instead of the field (kept for the rows
without logprobs, such as cached ones). The summary's `escalation` says how many rows went
up, which `signal` decided, and what the cascade saved against the strong model on every row.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import provider_of
from ..errors import InvalidConfig
from ..operators import Operator
from .engine import checked_plan, explain_map
from .explain import OperatorPlan, pop_explain
from .operation import MapCall, Operation, Steps, arun_operation, run_operation
from .prices import price_for
from .progress import BatchProgress, Listener
from .schema import result_schema, yes_no_schema

if TYPE_CHECKING:
    from ..runtime import AgentRuntime

DEFAULT_THRESHOLD = 0.8
ESCALATION_GUESS = 0.25
"""The share of rows a plan expects a cascade to escalate (known only once it ran)."""
CONFIDENCE = "confidence"
LOGPROB = "logprob"
LOGPROB_PROVIDERS = ("gemini", "vertex", "openai")
"""The providers whose replies carry token logprobs here (Anthropic's give none)."""
BY_LOGPROBS, BY_FIELD = "logprobs", "confidence field"
ANSWERED = ("ok", "cached")
_CONFIDENCE_FIELD = {"type": "number", "description": "How sure: 0 guessing, 1 certain."}
_CONFIDENCE_ASK = (
    f' Also give "{CONFIDENCE}": how sure you are of the answer, from 0 (a guess) to 1 (certain).'
)
_FILTER_ASK = 'Does the following hold? Answer in JSON with "match": true if it does, false if not.'
_CLASSIFY_ASK = (
    "Classify the following as exactly one of these labels: {labels}. Answer in JSON with "
    '"label": the label.'
)
_REPLY_TOKENS = 8
"""About the tokens of a yes/no or label reply (a confidence adds as many)."""
_SCHEMA_OPTIONS = ("schema", "response_schema", "response_mime_type")


@dataclass(frozen=True)
class Escalation:
    """What a cascade did: `rows` (a `share` of all) went from `model` to
    `escalate_to`; `usd` is what both runs cost, `usd_strong_only` what the strong model
    on every row would have (at the cheap run's tokens), `saving` the difference (None
    without prices). `progress` is the strong run's (None if nothing went up)."""

    model: str
    escalate_to: str
    threshold: float
    rows: int
    share: float
    usd: float | None
    usd_strong_only: float | None
    saving: float | None
    progress: BatchProgress | None
    note: str | None = None
    signal: str = BY_FIELD
    """What measured the cheap model's confidence: "logprobs", "confidence field", or
    both joined by " + " (logprobs where the reply had them, the field elsewhere)."""


@dataclass(frozen=True)
class OperatorSummary:
    """`result.attrs["agentrt"]` of an operator: the map run's final `progress`, the rows
    without an answer as (label, status, error), and the cascade's `escalation`."""

    operator: str
    progress: BatchProgress
    unanswered: tuple[tuple[Hashable, str, str], ...]
    escalation: Escalation | None = None

    def __repr__(self) -> str:
        parts = ", ".join(self.progress.count_parts())
        lines = [f"<{self.operator}: {self.progress.state}, {parts}>"]
        if self.unanswered:
            label, status, error = self.unanswered[0]
            lines.append(
                f"  {len(self.unanswered):,} rows unanswered, first {label!r} ({status}): {error}"
            )
        if (up := self.escalation) is not None:
            saving = "no price known" if up.saving is None else f"${up.saving:.4f}"
            lines.append(
                f"  escalated {up.rows:,} rows ({up.share:.0%}) to {up.escalate_to} "
                f"(by {up.signal}); saved {saving}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Cascade:
    """`escalate_to` answers again the rows the cheap model is less sure of than `threshold`."""

    escalate_to: str
    threshold: float
    logprobs: bool = False
    """Ask the cheap model for logprobs (its provider gives them)."""

    @classmethod
    def of(cls, escalate_to: object, threshold: object) -> Cascade | None:
        if escalate_to is None:
            if threshold is not None:
                raise InvalidConfig("a threshold needs escalate_to=", field="threshold")
            return None
        if not isinstance(escalate_to, str) or not escalate_to.strip():
            raise InvalidConfig("must be a model name", field="escalate_to")
        level = DEFAULT_THRESHOLD if threshold is None else threshold
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level <= 1:
            raise InvalidConfig(f"must be a number in (0, 1], got {level!r:.40}", field="threshold")
        return cls(escalate_to, float(level))


@dataclass
class Question:
    """One structured question per row of `frame`: `ask` + the template, replied as
    `schema`; with a cascade, the cheap run also asks for a confidence."""

    runtime: AgentRuntime
    operator: str
    frame: pd.DataFrame
    template: str
    ask: str
    schema: Any
    options: dict[str, Any]
    cascade: Cascade | None
    reply_tokens: int | None

    def __post_init__(self) -> None:
        """Check every option now, before anything is planned or sent."""
        for name in _SCHEMA_OPTIONS:
            if name in self.options:
                raise InvalidConfig(f"{self.operator} sets the reply's schema itself", field=name)
        first = self.first_call()
        options = dict(first.options)
        options.pop("store", None)
        checked_plan(self.runtime, first.frame, first.template, options)

    def prompt(self, *, confidence: bool) -> str:
        asked = self.ask + (_CONFIDENCE_ASK if confidence else "")
        return f"{asked}\n\n{self.template}" if asked else self.template

    def first_call(self) -> MapCall:
        """The run every row goes through (the cheap model's, in a cascade)."""
        if self.cascade is None:
            return MapCall(self.frame, self.prompt(confidence=False), self._options(self.schema))
        options = self._options(with_confidence(self.schema))
        if self.cascade.logprobs:
            options["logprobs"] = True
        return MapCall(self.frame, self.prompt(confidence=True), options)

    def escalated_call(self, positions: np.ndarray, first: BatchProgress) -> MapCall | str:
        """The strong model's run over the rows at `positions`, within what the cheap run
        left of the budgets; or why there is none (the budget is spent)."""
        assert self.cascade is not None
        options = self._options(self.schema)
        options["model"] = self.cascade.escalate_to
        if options.get("key") is not None:
            options["key"] = f"{options['key']}:escalated"
        if options.get("budget_tokens") is not None:
            options["budget_tokens"] -= first.tokens_in + first.tokens_out
            if options["budget_tokens"] < 1:
                return "budget_tokens is spent: nothing was escalated"
        if options.get("budget_usd") is not None:
            options["budget_usd"] -= first.cost_usd or 0.0
            if options["budget_usd"] <= 0:
                return "budget_usd is spent: nothing was escalated"
        return MapCall(self.frame.iloc[positions], self.prompt(confidence=False), options)

    def _options(self, schema: Any) -> dict[str, Any]:
        options = dict(self.options)
        if schema is not None:
            options["schema"] = schema
        return options

    def plan(self) -> OperatorPlan:
        first = self.first_call()
        tokens = self.reply_tokens
        if tokens is not None and self.cascade is not None:
            tokens += _REPLY_TOKENS
        step = "ask" if self.cascade is None else "ask cheap model"
        head = explain_map(
            self.runtime, first.frame, first.template, step=step, reply_tokens=tokens,
            **first.options,
        )  # fmt: skip
        if self.cascade is None:
            return OperatorPlan(self.operator, head.steps, head.notes)
        strong = self._options(self.schema) | {"model": self.cascade.escalate_to}
        every = explain_map(
            self.runtime, self.frame, self.prompt(confidence=False), step="escalate",
            reply_tokens=self.reply_tokens, **strong,
        )  # fmt: skip
        guess = (
            f"escalation is priced for {ESCALATION_GUESS:.0%} of the rows, a guess: the share "
            f"is known once the cheap model has answered (threshold {self.cascade.threshold:g})"
        )
        steps = (*head.steps, every.steps[0].scaled(ESCALATION_GUESS))
        return OperatorPlan(self.operator, steps, (*head.notes, guess))

    def answers(self) -> Steps:
        """The rows' answers (the map's result frame, the cascade's merged in) and the
        summary; a generator of map runs (see `operation`)."""
        first_call = self.first_call()
        first = yield first_call
        progress: BatchProgress = first.attrs["agentrt"]
        escalation = None
        if self.cascade is not None:
            first, escalation = yield from self._escalate(first, progress)
        first = first.drop(columns=[CONFIDENCE, LOGPROB], errors="ignore")
        return first, OperatorSummary(self.operator, progress, unanswered(first), escalation)

    def _escalate(self, first: pd.DataFrame, progress: BatchProgress) -> Steps:
        assert self.cascade is not None
        cascade = self.cascade
        status = first["status"].astype(str).to_numpy()
        answered = np.isin(status, ANSWERED)
        confidence, signal = row_confidence(first, answered)
        unsure = (answered & ~(confidence >= cascade.threshold)) | (status == "error")
        positions = np.flatnonzero(unsure)
        call = _no_escalation(progress) or self.escalated_call(positions, progress)
        if isinstance(call, str) or not len(positions):
            note = call if isinstance(call, str) else None
            return first, _escalation(cascade, progress, first, None, positions, note, signal)
        second = yield call
        strong_answered = np.isin(second["status"].astype(str).to_numpy(), ANSWERED)
        kept = first.drop(columns=[CONFIDENCE, LOGPROB], errors="ignore")
        merged = replace_rows(kept, positions[strong_answered], second[strong_answered])
        return merged, _escalation(cascade, progress, first, second, positions, None, signal)


def row_confidence(first: pd.DataFrame, answered: np.ndarray) -> tuple[np.ndarray, str]:
    """Each row's confidence: exp(mean token logprob) where the reply had logprobs, else
    its confidence field (NaN: none); and the signal the answered rows were measured by."""
    field = pd.to_numeric(first[CONFIDENCE], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if LOGPROB not in first.columns:
        return field, BY_FIELD
    logprob = first[LOGPROB].to_numpy(dtype=float, na_value=np.nan)
    measured = ~np.isnan(logprob)
    confidence = np.where(measured, np.exp(logprob), field)
    by_logprobs, by_field = (measured & answered).any(), (~measured & answered).any()
    signals = [name for name, used in ((BY_LOGPROBS, by_logprobs), (BY_FIELD, by_field)) if used]
    return confidence, " + ".join(signals) or BY_LOGPROBS


def _no_escalation(progress: BatchProgress) -> str | None:
    if progress.state == "cancelled":
        return "the cheap run was cancelled: nothing was escalated"
    if progress.stop_reason is not None:
        return f"the cheap run stopped ({progress.stop_reason}): nothing was escalated"
    return None


def with_confidence(schema: Any) -> dict[str, Any]:
    """`schema` as a JSON schema with a required `confidence` number added."""
    sent = result_schema(schema).json_schema
    properties = dict(sent.get("properties") or {})
    if CONFIDENCE in properties:
        raise InvalidConfig(
            f"the schema has a field {CONFIDENCE!r}, which a cascade adds itself: rename it",
            field="schema",
        )
    properties[CONFIDENCE] = _CONFIDENCE_FIELD
    required = [*(sent.get("required") or []), CONFIDENCE]
    return {**sent, "properties": properties, "required": required}


def replace_rows(first: pd.DataFrame, positions: np.ndarray, second: pd.DataFrame) -> pd.DataFrame:
    """`first` with the rows at `positions` replaced by `second`'s rows, in order (same
    columns)."""
    merged = first.copy()
    for column in first.columns:
        values = first[column].array.copy()
        values[positions] = second[column].array
        merged[column] = values
    return merged


def unanswered(result: pd.DataFrame) -> tuple[tuple[Hashable, str, str], ...]:
    """(label, status, error) of each row of a map result without an answer."""
    status = result["status"].astype(str).to_numpy()
    missing = np.flatnonzero(~np.isin(status, ANSWERED))
    errors = result["error"].to_numpy(dtype=object, na_value="")
    return tuple((result.index[p], str(status[p]), str(errors[p])) for p in missing)


def _escalation(
    cascade: Cascade,
    progress: BatchProgress,
    first: pd.DataFrame,
    second: pd.DataFrame | None,
    positions: np.ndarray,
    note: str | None,
    signal: str,
) -> Escalation:
    strong = second.attrs["agentrt"] if second is not None else None
    strong_model = strong.model if strong is not None else cascade.escalate_to
    batch = progress.mode == "batch"
    cheap_price, strong_price = price_for(progress.model), price_for(strong_model)
    cheap_tokens = _tokens(first)
    usd = usd_all = saving = None
    if cheap_price is not None and strong_price is not None:
        usd = cheap_price.cost(*cheap_tokens, batch=batch)
        if second is not None:
            usd += strong_price.cost(*_tokens(second), batch=batch)
        usd_all = strong_price.cost(*cheap_tokens, batch=batch)
        saving = usd_all - usd
    rows = len(positions) if second is not None else 0
    return Escalation(
        model=progress.model,
        escalate_to=strong_model,
        threshold=cascade.threshold,
        rows=rows,
        share=rows / len(first) if len(first) else 0.0,
        usd=usd,
        usd_strong_only=usd_all,
        saving=saving,
        progress=strong,
        note=note,
        signal=signal,
    )


def _tokens(result: pd.DataFrame) -> tuple[int, int]:
    return int(result["tokens_in"].sum()), int(result["tokens_out"].sum())


class Filter:
    """`filter`: see the module docstring."""

    def __init__(self, question: Question, *, mask: bool) -> None:
        if not isinstance(mask, bool):
            raise InvalidConfig("must be True or False", field="mask")
        self.question = question
        self.mask = mask

    def plan(self) -> OperatorPlan:
        return self.question.plan()

    def steps(self) -> Steps:
        answers, summary = yield from self.question.answers()
        answered = np.isin(answers["status"].astype(str).to_numpy(), ANSWERED)
        matched = answers["match"].to_numpy(dtype=bool, na_value=False) & answered
        frame = self.question.frame
        result = (
            pd.Series(matched, index=frame.index, name="match") if self.mask else frame[matched]
        )
        result.attrs["agentrt"] = summary
        return result


class Classify:
    """`classify`: see the module docstring."""

    def __init__(self, question: Question) -> None:
        self.question = question

    def plan(self) -> OperatorPlan:
        return self.question.plan()

    def steps(self) -> Steps:
        answers, summary = yield from self.question.answers()
        labels = answers["label"].rename("label")
        labels.attrs = {"agentrt": summary}
        return labels


class Extract:
    """`extract`: see the module docstring."""

    def __init__(self, question: Question, fields: Sequence[str]) -> None:
        self.question = question
        self.fields = list(fields)

    def plan(self) -> OperatorPlan:
        return self.question.plan()

    def steps(self) -> Steps:
        answers, summary = yield from self.question.answers()
        columns = answers[self.fields].copy()
        columns.attrs = {"agentrt": summary}
        return columns


def label_names(labels: object) -> list[str]:
    """The categories of `labels`: a list of distinct non-empty strings, or an Enum (its
    string values, else its member names)."""
    if isinstance(labels, type) and issubclass(labels, enum.Enum):
        members = list(labels)
        values = [m.value for m in members]
        names = values if all(isinstance(v, str) for v in values) else [m.name for m in members]
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        names = list(labels)
    else:
        raise InvalidConfig("must be a list of label strings or an Enum", field="labels")
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InvalidConfig("must be non-empty strings (at least one)", field="labels")
    if len(set(names)) != len(names):
        raise InvalidConfig("must be distinct", field="labels")
    return [str(n) for n in names]


def _question(
    runtime: AgentRuntime,
    operator: str,
    frame: pd.DataFrame,
    template: str,
    ask: str,
    schema: Any,
    options: dict[str, Any],
    reply_tokens: int | None,
) -> Question:
    cascade = Cascade.of(options.pop("escalate_to", None), options.pop("threshold", None))
    if cascade is not None and _gives_logprobs(runtime, options):
        cascade = Cascade(cascade.escalate_to, cascade.threshold, logprobs=True)
    if not isinstance(template, str):
        raise InvalidConfig("must be a string such as '{text}'", field="template")
    return Question(runtime, operator, frame, template, ask, schema, options, cascade, reply_tokens)


def _gives_logprobs(runtime: AgentRuntime, options: dict[str, Any]) -> bool:
    """The cheap run is live, on a provider whose replies carry logprobs, and the caller
    did not say `logprobs=False`."""
    if options.get("mode", "live") != "live" or options.get("logprobs") is False:
        return False
    model = options.get("model") or getattr(options.get("config"), "model", None)
    return provider_of(runtime.config.model_for(model)) in LOGPROB_PROVIDERS


def _filter(runtime: AgentRuntime, frame: Any, template: str, options: dict[str, Any]) -> Filter:
    mask = options.pop("mask", False)
    schema = yes_no_schema("match")
    question = _question(
        runtime, "filter", frame, template, _FILTER_ASK, schema, options, _REPLY_TOKENS
    )
    return Filter(question, mask=mask)


def _classify(
    runtime: AgentRuntime, frame: Any, template: str, options: dict[str, Any]
) -> Classify:
    if "labels" not in options:
        raise InvalidConfig("give the categories: labels=[...] or an Enum", field="labels")
    names = label_names(options.pop("labels"))
    listed = ", ".join(_braces(name) for name in names)
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": names}},
        "required": ["label"],
    }
    tokens = _REPLY_TOKENS + math.ceil(max(len(n) for n in names) / 4)
    ask = _CLASSIFY_ASK.format(labels=listed)
    return Classify(_question(runtime, "classify", frame, template, ask, schema, options, tokens))


def _extract(runtime: AgentRuntime, frame: Any, template: str, options: dict[str, Any]) -> Extract:
    if options.get("schema") is None:
        raise InvalidConfig("give the fields to extract: schema=Model", field="schema")
    schema = options.pop("schema")
    fields = [field.name for field in result_schema(schema).fields]
    question = _question(runtime, "extract", frame, template, "", schema, options, None)
    return Extract(question, fields)


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


_MAKERS: dict[str, Callable[[AgentRuntime, Any, str, dict[str, Any]], Operation]] = {
    "filter": _filter,
    "classify": _classify,
    "extract": _extract,
}


def _operator(name: str) -> Operator:
    make = _MAKERS[name]

    def run(
        runtime: AgentRuntime,
        frame: Any,
        template: str,
        /,
        *,
        progress: bool | Listener | None = None,
        **options: Any,
    ) -> Any:
        explain = pop_explain(options)
        return run_operation(
            runtime, make(runtime, frame, template, options), explain=explain, progress=progress
        )

    async def arun(
        runtime: AgentRuntime,
        frame: Any,
        template: str,
        /,
        *,
        progress: bool | Listener | None = None,
        **options: Any,
    ) -> Any:
        explain = pop_explain(options)
        operation: Operation = make(runtime, frame, template, options)
        return await arun_operation(runtime, operation, explain=explain, progress=progress)

    run.__doc__ = arun.__doc__ = f"`{name}`: see `agentrt_jupyter.batch.semantic`."
    return Operator(name, run, arun)


OPERATORS = {name: _operator(name) for name in _MAKERS}
