"""Plans and prices before spending: what an operator would send, without sending it.

Every operator takes `explain=True` (alias `dry_run=True`) and then returns an
`OperatorPlan` instead of running: its steps (one per kind of request: a filter's yes/no
judgements, a cascade's escalations, ...), each with the calls it would make, the rows
already answered (kept in the results table under the same run key, so a re-run sends
nothing for them), the estimated tokens and the estimated cost (see `prices`; None for a
model the table lacks). No model is called and no request is sent.

Token estimates are the map engine's own (`controller.RateController.estimate`): the
prompt's characters at 4 a token, plus the system instruction; the reply as many tokens
as the prompt (or `max_output_tokens`) unless the operator knows its replies are short
(`reply_tokens`: a yes/no, a label).

For an operator of your own: build each step with `price_prompts` (prompts of your own)
or take the steps of `map`'s plan (`operator("map").run(runtime, frame, template,
explain=True).steps`), then `OperatorPlan(name, steps, notes)`.

Before an operator sends anything it asks the cost gate (`confirm` / `aconfirm`): in a
notebook, a plan whose estimate passes `AgentMagics.confirm_cost` shows Approve / Cancel
in the cell first, and nothing is sent unless approved (`CostNotApproved`). The gate is
the notebook layer's, registered by the package root (`set_cost_gate`); elsewhere there
is none and nothing asks.
"""

from __future__ import annotations

import asyncio
import html
import math
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CostNotApproved, InvalidConfig
from .controller import RateController

if TYPE_CHECKING:
    import pandas as pd

    from .plan import MapPlan
    from .records import RunResults


@dataclass(frozen=True)
class PlanStep:
    """One step of a plan: `calls` requests to send to `model`, `cached_calls` rows that
    need none (answered before), the estimated tokens and cost of the calls (`usd` None
    when the model has no known price)."""

    name: str
    model: str
    calls: int
    cached_calls: int
    tokens_in: int
    tokens_out: int
    usd: float | None

    def scaled(self, share: float, name: str | None = None) -> PlanStep:
        """This step for `share` (0..1) of its calls (an escalation's expected share)."""
        return replace(
            self,
            name=name or self.name,
            calls=math.ceil(self.calls * share),
            cached_calls=0,
            tokens_in=math.ceil(self.tokens_in * share),
            tokens_out=math.ceil(self.tokens_out * share),
            usd=None if self.usd is None else self.usd * share,
        )


@dataclass(frozen=True)
class OperatorPlan:
    """What an operator would do: its steps, their totals and notes (budgets, rows that
    cannot be filled in, bounds). `to_frame()` has one row per step."""

    operator: str
    steps: tuple[PlanStep, ...]
    notes: tuple[str, ...] = ()

    @property
    def calls(self) -> int:
        return sum(step.calls for step in self.steps)

    @property
    def cached_calls(self) -> int:
        return sum(step.cached_calls for step in self.steps)

    @property
    def tokens_in(self) -> int:
        return sum(step.tokens_in for step in self.steps)

    @property
    def tokens_out(self) -> int:
        return sum(step.tokens_out for step in self.steps)

    @property
    def usd(self) -> float | None:
        """The estimated cost of all steps; None if a step's model has no known price."""
        costs = [step.usd for step in self.steps]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def to_frame(self) -> pd.DataFrame:
        """One row per step (index: its name): model, calls, cached_calls, tokens_in,
        tokens_out, usd."""
        import pandas as pd

        return pd.DataFrame(
            {
                "model": pd.array([s.model for s in self.steps], dtype="string"),
                "calls": pd.array([s.calls for s in self.steps], dtype="Int64"),
                "cached_calls": pd.array([s.cached_calls for s in self.steps], dtype="Int64"),
                "tokens_in": pd.array([s.tokens_in for s in self.steps], dtype="Int64"),
                "tokens_out": pd.array([s.tokens_out for s in self.steps], dtype="Int64"),
                "usd": pd.array([s.usd for s in self.steps], dtype="Float64"),
            },
            index=pd.Index([s.name for s in self.steps], name="step"),
        )

    def cost(self) -> str:
        """The estimated cost as text: `~$0.0123`, or `no price known`."""
        return _usd(self.usd)

    def summary(self) -> str:
        """One line: calls, cached rows, tokens and cost."""
        return (
            f"{self.calls:,} calls ({self.cached_calls:,} rows cached), about "
            f"{self.tokens_in:,} tokens in and {self.tokens_out:,} out, {_usd(self.usd)}"
        )

    def __repr__(self) -> str:
        lines = [f"{self.operator} plan: {self.summary()}"]
        lines += [
            f"  {s.name}: {s.calls:,} calls to {s.model} ({s.cached_calls:,} cached), "
            f"~{s.tokens_in:,} in / ~{s.tokens_out:,} out, {_usd(s.usd)}"
            for s in self.steps
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(
            f"<th>{name}</th>"
            for name in ("step", "model", "calls", "cached", "tokens in", "tokens out", "usd")
        )
        rows = "".join(
            f"<tr><td>{html.escape(s.name)}</td><td>{html.escape(s.model)}</td>"
            f"<td>{s.calls:,}</td><td>{s.cached_calls:,}</td><td>{s.tokens_in:,}</td>"
            f"<td>{s.tokens_out:,}</td><td>{_usd(s.usd)}</td></tr>"
            for s in self.steps
        )
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes)
        return (
            f"<div class='agentrt-plan'><b>{html.escape(self.operator)} plan</b>: "
            f"{html.escape(self.summary())}<table><tr>{head}</tr>{rows}</table>"
            f"{f'<ul>{notes}</ul>' if notes else ''}</div>"
        )


def _usd(usd: float | None) -> str:
    if usd is None:
        return "no price known"
    return f"~${usd:.4f}" if usd >= 0.001 or usd == 0 else f"~${usd:.2g}"


def pop_explain(options: MutableMapping[str, Any]) -> bool:
    """Take `explain` / `dry_run` out of an operator's `options`: True if either asks for
    the plan; `InvalidConfig` for a value that is not a bool."""
    wanted = False
    for name in ("explain", "dry_run"):
        value = options.pop(name, False)
        if not isinstance(value, bool):
            raise InvalidConfig("must be True or False", field=name)
        wanted = wanted or value
    return wanted


def price_prompts(
    plan: MapPlan,
    prompts: Iterable[str],
    *,
    name: str,
    cached: Callable[[str], bool] | None = None,
    reply_tokens: int | None = None,
) -> PlanStep:
    """The step of sending each of `prompts` under `plan` (its model, settings, price):
    a prompt for which `cached(prompt)` is true costs nothing; `reply_tokens` is the
    expected length of one reply when the operator knows it (else the engine's guess)."""
    estimator = RateController.for_plan(plan, math.inf)
    calls = cached_calls = tokens_in = tokens_out = 0
    usd = 0.0
    for prompt in prompts:
        if cached is not None and cached(prompt):
            cached_calls += 1
            continue
        estimate = estimator.estimate(prompt)
        out = estimate.tokens_out if reply_tokens is None else reply_tokens
        calls += 1
        tokens_in += estimate.tokens_in
        tokens_out += out
        if plan.price is not None:
            usd += plan.price.cost(estimate.tokens_in, out, batch=plan.mode == "batch")
    return PlanStep(
        name=name,
        model=plan.model,
        calls=calls,
        cached_calls=cached_calls,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        usd=usd if plan.price is not None else None,
    )


def plan_frame(
    plan: MapPlan,
    frame: pd.DataFrame,
    results: RunResults | None,
    *,
    name: str = "map",
    reply_tokens: int | None = None,
) -> tuple[PlanStep, tuple[str, ...]]:
    """The step of running `plan` over `frame`, rows kept in `results` under the plan's run
    key counted as cached (`refresh` counts none); and notes on what it leaves out."""
    unfilled: list[int] = []
    lookup = None if results is None or plan.refresh else results

    def prompts() -> Iterable[str]:
        for position, prompt, _ in plan.prompts(frame):
            if prompt is None:
                unfilled.append(position)
            else:
                yield prompt

    def cached(prompt: str) -> bool:
        return lookup is not None and lookup.get(plan.row_key(prompt)) is not None

    step = price_prompts(plan, prompts(), name=name, cached=cached, reply_tokens=reply_tokens)
    return step, _notes(plan, unfilled, len(frame))


def _notes(plan: MapPlan, unfilled: list[int], total: int) -> tuple[str, ...]:
    notes = []
    if unfilled:
        notes.append(
            f"{len(unfilled):,} of {total:,} rows cannot fill the template (they become row "
            f"errors and send nothing), the first at position {unfilled[0]}"
        )
    if plan.budget_tokens is not None:
        notes.append(f"budget_tokens={plan.budget_tokens:,} stops the run when it is spent")
    if plan.budget_usd is not None:
        notes.append(f"budget_usd={plan.budget_usd:g} stops the run when it is spent")
    if plan.mode == "batch":
        notes.append("mode='batch': priced at the Batch API's half price")
    if plan.config.tools:
        notes.append("rows call tools: each tool step is one more call, not counted here")
    return tuple(notes)


class CostGate(Protocol):
    """Who approves a costly plan (the notebook's cell, see `notebook.costgate`)."""

    threshold: float
    """Plans estimated above this many US dollars are asked about."""

    def ask(self, plan: OperatorPlan) -> bool:
        """Approved? Asked from a blocking caller (the kernel's main thread)."""

    async def aask(self, plan: OperatorPlan) -> bool:
        """Approved? Asked from an awaiting caller (a cell's top-level await)."""


_gate_finder: Callable[[], CostGate | None] | None = None


def set_cost_gate(finder: Callable[[], CostGate | None] | None) -> None:
    """Where operators find the cost gate: `finder()` returns it, or None where nothing
    asks (outside a notebook)."""
    global _gate_finder
    _gate_finder = finder


def cost_gate() -> CostGate | None:
    """The gate a plan must pass here and now, or None (then no plan needs making)."""
    finder = _gate_finder
    return None if finder is None else finder()


def confirm(gate: CostGate, plan: OperatorPlan) -> None:
    """Ask `gate` about `plan` if its estimate passes the threshold; `CostNotApproved`
    unless approved."""
    if _passes(gate, plan) and not gate.ask(plan):
        raise _not_approved(gate, plan)


async def aconfirm(gate: CostGate, plan: OperatorPlan) -> None:
    """`confirm` for an awaiting caller."""
    if _passes(gate, plan) and not await gate.aask(plan):
        raise _not_approved(gate, plan)


def confirm_plan(make_plan: Callable[[], OperatorPlan]) -> None:
    """Where a gate asks (a notebook), make the plan and `confirm` it; elsewhere no plan
    is made."""
    if (gate := cost_gate()) is not None:
        confirm(gate, make_plan())


async def aconfirm_plan(make_plan: Callable[[], OperatorPlan]) -> None:
    """`confirm_plan` for an awaiting caller (the plan is made on a worker thread)."""
    if (gate := cost_gate()) is not None:
        await aconfirm(gate, await asyncio.to_thread(make_plan))


def _passes(gate: CostGate, plan: OperatorPlan) -> bool:
    return plan.usd is not None and plan.usd > gate.threshold


def _not_approved(gate: CostGate, plan: OperatorPlan) -> CostNotApproved:
    return CostNotApproved(
        f"{plan.operator} was not approved: its estimate, {plan.cost()}, passes "
        f"AgentMagics.confirm_cost={gate.threshold:g}; nothing was sent",
        usd=plan.usd,
        threshold=gate.threshold,
    )
