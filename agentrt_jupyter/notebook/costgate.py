"""Asking before a costly run: an operator (map included) whose estimate passes
`AgentMagics.confirm_cost` shows its plan with Approve / Cancel in the cell, and sends
nothing until Approve is clicked.

The package root registers `kernel_cost_gate` as the batch layer's gate finder (see
`batch.explain`): in an IPython kernel it is a `CellCostGate` with the magics'
threshold (the default, 1 US dollar, before `%load_ext`), elsewhere None, so nothing
asks outside a notebook. `confirm_cost = None` turns the question off.

Where the question can be answered decides how it is asked. A cell awaiting the run
(`await rt.aio.filter(...)`, `await df.agentrt.amap(...)`, a `%%agent --map` cell)
handles clicks on ipykernel >= 7.4 (`approval.clicks_while_awaiting`): buttons, as the
tool approvals have, answered through the same `approval.Request`. A blocking call
(`rt.map(...)` in a plain cell) holds the kernel's main thread, where no click is
handled: it asks on stdin, as `input()` does, and counts a kernel without stdin
(nbclient, papermill) as a refusal, saying how to go on. No answer within the approval
timeout is a refusal too.
"""

from __future__ import annotations

import asyncio
import html
import sys
from typing import TYPE_CHECKING, Any

from .approval import APPROVAL_TIMEOUT, Request, clicks_while_awaiting
from .display import close_tree

if TYPE_CHECKING:
    from ..batch.explain import OperatorPlan

DEFAULT_CONFIRM_COST = 1.0
"""US dollars; the default of `AgentMagics.confirm_cost`."""
_YES = ("y", "yes")


class CellCostGate:
    """Asks in the running cell about plans estimated above `threshold` US dollars."""

    def __init__(self, threshold: float, timeout: float = APPROVAL_TIMEOUT) -> None:
        self.threshold = threshold
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<CellCostGate above ${self.threshold:g}>"

    def ask(self, plan: OperatorPlan) -> bool:
        """Blocking caller: the question on stdin (clicks cannot reach a blocked cell)."""
        question = f"{plan!r}\n{self._passes(plan)}: send it? [y/N] "
        try:
            answer = input(question)
        except Exception as exc:  # StdinNotImplementedError: no stdin in this kernel
            why = exc.__class__.__name__
            print(
                f"{self._passes(plan)}, and this kernel takes no typed answer ({why}): nothing "
                "was sent. Await it in a cell to get Approve / Cancel buttons (await "
                "runtime.aio.<operator>(...)), or raise %config AgentMagics.confirm_cost",
                file=sys.stderr,
            )
            return False
        return answer.strip().lower() in _YES

    async def aask(self, plan: OperatorPlan) -> bool:
        """Awaiting caller: Approve / Cancel buttons in the cell, or stdin where clicks
        wait for the cell to end (ipykernel < 7.4)."""
        if not clicks_while_awaiting():
            return self.ask(plan)
        from IPython.display import display

        request = Request(plan.operator, "cost", {}, offers_all=False)
        shown = question_widget(request, plan, self._passes(plan))
        display(shown)  # type: ignore[no-untyped-call]
        try:
            answered = asyncio.shield(asyncio.wrap_future(request.future))
            answer = await asyncio.wait_for(answered, self.timeout)
        except TimeoutError:
            request.expire("timeout")
            answer = "timeout"
        except asyncio.CancelledError:
            request.expire("cancelled")
            raise
        finally:
            close_tree(shown)
        approved = answer == "approve"
        outcome = "approved" if approved else f"not sent ({_OUTCOMES.get(answer, answer)})"
        display(_note(f"{plan.operator}: {plan.summary()}: {outcome}"))  # type: ignore[no-untyped-call]
        return approved

    def _passes(self, plan: OperatorPlan) -> str:
        return f"the estimate, {plan.cost()}, passes AgentMagics.confirm_cost=${self.threshold:g}"


_OUTCOMES = {"deny": "cancelled", "timeout": "no answer in time"}


def question_widget(request: Request, plan: OperatorPlan, why: str) -> Any:
    """The plan and Approve / Cancel; a click only records the answer (`Request.answer`)."""
    import ipywidgets as widgets

    lead = widgets.HTML(f"<div><b>{html.escape(why)}</b>: nothing is sent until you approve.</div>")
    shown = widgets.HTML(plan._repr_html_())
    row = []
    for label, style, icon, answer in (
        ("Approve", "success", "check", "approve"),
        ("Cancel", "danger", "times", "deny"),
    ):
        button = widgets.Button(description=label, button_style=style, icon=icon)
        button.layout.width = "auto"
        button.on_click(lambda _b, a=answer: request.answer(a))
        row.append(button)
    return widgets.VBox([lead, shown, widgets.HBox(row)])


def _note(text: str) -> Any:
    from IPython.display import HTML

    return HTML(f"<small>{html.escape(text)}</small>")  # type: ignore[no-untyped-call]


def kernel_cost_gate() -> CellCostGate | None:
    """The gate of this IPython kernel (None outside one, or with confirm_cost None)."""
    if "ipykernel" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    magics = shell.magics_manager.registry.get("AgentMagics")
    if magics is None:
        return CellCostGate(DEFAULT_CONFIRM_COST)
    threshold = magics.confirm_cost
    if threshold is None:
        return None
    return CellCostGate(float(threshold), float(magics.approval_timeout))
