"""Asking the user before a tool runs: who asks, where the question shows, what counts as yes.

Each notebook agent with tools has one `Approver`; `Approver.confirm` is its
`AgentConfig.confirm_tool`, and `Approver.approve_python` is the built-in approval of its
`@python` tool. The approver asks only for the tools its policy covers (`--confirm`,
`--confirm f,g`); `@python` asks for every run, always, and "Approve all in this turn"
never covers it. Only an explicit Approve runs the call: Deny, no answer within
`timeout` seconds, a cancelled turn, or a place that cannot take an answer are refusals,
and the model is told the user declined.

The question shows where the turn shows: a `%%agent` cell claims the agent's next turn
before it starts it, and binds the claim to the turn's handle and its cell's view (an
`ApprovalSurface`) once it has one, so a call is asked in the cell of the turn it belongs
to, also when several cells queue turns of one agent. A turn no cell claimed (sent from
an AgentPanel or the Python API) asks in the agent's latest `ApprovalHost`: the one inside
its AgentPanel, or one displayed for it. Every open question is also in `pending()`, for
`%agent approve` / `%agent deny` (the way to answer from another cell, e.g. for a
`--background` turn, or when no host shows the question).

Clicks are answered on the kernel's main thread and only post the answer to the runtime
loop, where the approver waits; a foreground cell takes clicks while it awaits only on
ipykernel >= 7.4 (`clicks_while_awaiting`), so elsewhere a foreground cell that may have
to ask is refused before it starts (see `datacell`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .display import close_tree

if TYPE_CHECKING:
    from ..handle import ChatHandle

APPROVAL_TIMEOUT = 120.0
"""Seconds a request waits for an answer before it counts as a denial (shorter than the
default `AgentConfig.tool_timeout`, 300 s, which also bounds a waiting `@python` run)."""
BIND_WAIT = 5.0
"""How long a call waits for the cell that claimed its turn to bind to it (it does so
right after starting the turn; only a cell that failed to start leaves a claim unbound)."""
QUESTION_CHARS = 20_000
"""Most characters of a call's arguments (or code) a question shows."""
CLICKS_FROM = (7, 4)
"""The ipykernel that handles widget clicks while an awaiting cell runs (DESIGN §5)."""

Answer = Literal["approve", "deny", "approve_all"]
ANSWERS: tuple[Answer, ...] = ("approve", "deny", "approve_all")


def clicks_while_awaiting() -> bool:
    """Whether this kernel handles widget clicks while an awaiting cell runs."""
    module = sys.modules.get("ipykernel")
    version = str(getattr(module, "__version__", ""))
    numbers: list[int] = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        numbers.append(int(digits) if digits else 0)
    return len(numbers) == 2 and (numbers[0], numbers[1]) >= CLICKS_FROM


def kernel_version() -> str:
    return str(getattr(sys.modules.get("ipykernel"), "__version__", "none"))


@dataclass(eq=False)
class Request:
    """One question to the user: may `agent` call `tool` with `args`?"""

    agent: str
    tool: str
    args: dict[str, Any]
    code: str | None = None
    """The code of a `@python` run, shown as code."""
    offers_all: bool = True
    """Whether "Approve all in this turn" is offered (never for `@python`)."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outcome: str = ""
    """How it ended, for the display: approved, denied, timed out, cancelled."""
    future: concurrent.futures.Future[str] = field(default_factory=concurrent.futures.Future)
    """The answer, once given (set from any thread; the approver awaits it on the loop)."""
    _answer: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, answer: Answer) -> bool:
        """Answer from any thread (a click, `%agent approve`); False if already answered."""
        if answer not in ANSWERS:
            raise ValueError(f"an answer is one of {ANSWERS}, got {answer!r}")
        with self._lock:
            if self._answer is not None:
                return False
            self._answer = answer
            self.future.set_result(answer)
        return True

    def expire(self, why: str) -> None:
        """No answer will come (timeout, cancel): later clicks are ignored."""
        with self._lock:
            if self._answer is None:
                self._answer = why

    def describe(self) -> str:
        """`tool(args)` in one line, for `%agent approve` and the text fallback."""
        if self.code is not None:
            first = self.code.strip().splitlines()[0] if self.code.strip() else ""
            more = " …" if len(self.code.strip().splitlines()) > 1 else ""
            return f"{self.tool}: {first[:120]}{more}"
        return f"{self.tool}({short_json(self.args, 160)})"

    def question_html(self) -> str:
        """The question as the cell shows it: the tool and its arguments, or the code."""
        agent, tool = html.escape(self.agent), html.escape(self.tool)
        if self.code is not None:
            shown = self.code
            lead = f"<b>{agent}</b> wants to run this Python code in your namespace:"
        else:
            shown = json.dumps(self.args, indent=2, ensure_ascii=False, default=repr)
            lead = f"<b>{agent}</b> wants to call <code>{tool}</code> with:"
        cut = ""
        if len(shown) > QUESTION_CHARS:
            left = len(shown) - QUESTION_CHARS
            shown = shown[:QUESTION_CHARS]
            cut = f"<div><b>{left:,} more characters not shown</b>: deny unless you know why</div>"
        style = "margin:2px 0;max-height:30em;overflow:auto"
        return f"<div>{lead}<pre style='{style}'>{html.escape(shown)}</pre>{cut}</div>"


class ApprovalSurface(Protocol):
    """Where the questions of one turn (a cell) or of one agent's other turns (a host) show.

    Every method is called on the runtime loop."""

    approve_all: bool
    """Set once "Approve all in this turn" was clicked (surfaces of one turn only)."""
    per_turn: bool
    """The surface is one turn's: "Approve all in this turn" can be offered."""

    def why_not(self) -> str | None:
        """Why no answer can come here (None: one can)."""

    def ask(self, request: Request) -> None:
        """Show the question with its buttons."""

    def settle(self, request: Request) -> None:
        """The question is answered (or expired): drop its buttons, show the outcome."""

    def running(self, tool: str) -> None:
        """The call of `tool` starts now (approved, or not asked)."""


@dataclass(eq=False)
class Claim:
    """A cell's claim on its agent's next turn; bound to the turn once it started."""

    handle: ChatHandle | None = None
    surface: ApprovalSurface | None = None
    bound: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)
    """Resolved once the claimed turn started (`Approver.bind`, from the main thread)."""


_pending: list[Request] = []
_pending_lock = threading.Lock()
_asked = threading.Condition(_pending_lock)
_hosts: dict[str, list[ApprovalSurface]] = {}


def pending(agent: str | None = None) -> list[Request]:
    """The open questions, oldest first (of `agent`, or of every agent)."""
    with _pending_lock:
        return [r for r in _pending if agent is None or r.agent == agent]


def wait_for_question(timeout: float) -> None:
    """Until a question is asked, or `timeout` seconds (main thread: keep it short)."""
    with _asked:
        _asked.wait(timeout)


def add_host(agent: str, host: ApprovalSurface) -> None:
    """Ask the questions of `agent`'s turns that no cell claimed in `host` (loop thread)."""
    _hosts.setdefault(agent, []).append(host)


def remove_host(agent: str, host: ApprovalSurface) -> None:
    hosts = _hosts.get(agent, [])
    if host in hosts:
        hosts.remove(host)


@dataclass(frozen=True)
class Policy:
    """Which calls are asked about before they run."""

    every_tool: bool = False
    """`--confirm`: every call."""
    tools: frozenset[str] = frozenset()
    """`--confirm f,g`: the calls of these tools."""
    asks_itself: frozenset[str] = frozenset()
    """Tools that ask on their own, every time (`@python`): the policy does not ask twice."""

    def covers(self, tool: str) -> bool:
        """Whether a call of `tool` is asked about before it runs."""
        return tool in self.asks_itself or self.every_tool or tool in self.tools

    def asks(self) -> bool:
        """Whether any call may be asked about."""
        return bool(self.every_tool or self.tools or self.asks_itself)

    def text(self) -> str:
        if self.every_tool:
            return "asks before every call"
        if self.tools:
            return f"asks before {', '.join(sorted(self.tools))}"
        if self.asks_itself:
            return f"{', '.join(sorted(self.asks_itself))} asks before every run"
        return "asks before no call"


class Approver:
    """The approval policy and the questions of one notebook agent (module docstring)."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.policy = Policy()
        self.timeout = APPROVAL_TIMEOUT
        self._claims: list[Claim] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Approver of {self.agent!r}: {self.policy.text()}>"

    def claim(self) -> Claim:
        """Claim the agent's next turn for a cell (main thread, before the turn starts).

        An unbound claim left over is from a cell whose turn never started: dropped."""
        claim = Claim()
        with self._lock:
            self._claims = [c for c in self._claims if c.handle is not None and not c.handle.done]
            self._claims.append(claim)
        return claim

    def bind(self, claim: Claim, handle: ChatHandle, surface: ApprovalSurface) -> None:
        """The claimed turn started as `handle` and shows in `surface` (main thread)."""
        with self._lock:
            claim.handle, claim.surface = handle, surface
            if not claim.bound.done():
                claim.bound.set_result(None)

    async def confirm(self, tool: str, args: dict[str, Any]) -> bool:
        """`AgentConfig.confirm_tool`: True to run the call (on the runtime loop)."""
        surface = await self._surface()  # first: the cell that claimed the turn sets the policy
        policy = self.policy
        if not policy.covers(tool) or tool in policy.asks_itself:
            if surface is not None:
                surface.running(tool)
            return True
        return await self._ask(surface, tool, args, code=None)

    async def approve_python(self, tool: str, args: dict[str, Any]) -> bool:
        """The `@python` tool's own approval: every run is asked, with its code."""
        surface = await self._surface()
        code = args.get("code")
        return await self._ask(surface, tool, args, code=code if isinstance(code, str) else "")

    async def _surface(self) -> ApprovalSurface | None:
        """The surface of the turn running now: its cell's, else a host of this agent."""
        while True:
            with self._lock:
                claims = list(self._claims)
            for claim in claims:
                handle = claim.handle
                if handle is not None and handle.status == "running":
                    return claim.surface
            unbound = next((c for c in claims if c.handle is None), None)
            if unbound is None:
                break
            try:
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(unbound.bound)), BIND_WAIT
                )
            except TimeoutError:
                with self._lock:
                    if unbound in self._claims and unbound.handle is None:
                        self._claims.remove(unbound)
        hosts = _hosts.get(self.agent)
        return hosts[-1] if hosts else None

    async def _ask(
        self, surface: ApprovalSurface | None, tool: str, args: dict[str, Any], code: str | None
    ) -> bool:
        if code is None and surface is not None and surface.approve_all:
            surface.running(tool)
            return True
        per_turn = surface is not None and surface.per_turn
        request = Request(
            self.agent, tool, dict(args), code=code, offers_all=code is None and per_turn
        )
        problem = surface.why_not() if surface is not None else None
        if problem is not None:
            assert surface is not None
            request.expire("refused")
            request.outcome = f"not asked, so not run: {problem}"
            surface.settle(request)
            return False
        answer = await self._answer(request, surface)
        if answer == "approve_all" and surface is not None:
            surface.approve_all = True
        approved = answer in ("approve", "approve_all")
        if approved and surface is not None:
            surface.running(tool)
        return approved

    async def _answer(self, request: Request, surface: ApprovalSurface | None) -> str:
        """Ask `request` (in `surface` and in `pending()`) and wait for its answer, or
        "timeout" once `timeout` seconds pass without one."""
        with _asked:
            _pending.append(request)
            _asked.notify_all()
        if surface is not None:
            surface.ask(request)
        try:
            answered = asyncio.shield(asyncio.wrap_future(request.future))
            return await asyncio.wait_for(answered, self.timeout)
        except TimeoutError:
            request.expire("timeout")
            request.outcome = f"no answer within {self.timeout:g} s: denied"
            return "timeout"
        except asyncio.CancelledError:
            request.expire("cancelled")
            request.outcome = "the turn was cancelled"
            raise
        finally:
            with _pending_lock:
                if request in _pending:
                    _pending.remove(request)
            if request.future.done() and not request.outcome:
                request.outcome = _OUTCOMES[request.future.result()]
            if surface is not None:
                surface.settle(request)


_OUTCOMES = {
    "approve": "approved",
    "deny": "denied: the model is told you declined",
    "approve_all": "approved, with every further call of this turn",
}


def short_json(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answer_pending(agent: str | None, answer: Answer) -> Request | None:
    """Answer the oldest open question (of `agent`); the request answered, or None."""
    for request in pending(agent):
        if request.answer(answer):
            return request
    return None


def question_widget(request: Request) -> Any:
    """The question and its Approve / Deny (/ Approve all in this turn) buttons.

    A click only records the answer and posts it to the runtime loop (`Request.answer`)."""
    import ipywidgets as widgets

    buttons = [
        ("Approve", "success", "check", "approve"),
        ("Deny", "danger", "times", "deny"),
    ]
    if request.offers_all:
        buttons.append(("Approve all in this turn", "", "check-double", "approve_all"))
    row = []
    for label, style, icon, answer in buttons:
        button = widgets.Button(description=label, button_style=style, icon=icon)
        button.layout.width = "auto"
        button.on_click(lambda _b, a=answer: request.answer(a))
        row.append(button)
    question = widgets.HTML(request.question_html())
    return widgets.VBox([question, widgets.HBox(row)])


class ApprovalHost:
    """Shows the questions of one agent's turns that no cell claimed (AgentPanel, API).

    Every `AgentPanel` holds one (`AgentPanel.approvals`); for a turn sent from the Python
    API, display one yourself: `ApprovalHost("name")`. It is a surface the approver asks
    in; its widget is written on the runtime loop only, and `on_change` (also called there)
    lets its owner redraw around it."""

    approve_all = False
    per_turn = False

    def __init__(
        self, agent: str, *, on_change: Callable[[], None] | None = None, quiet: bool = False
    ) -> None:
        """`quiet`: no idle line, only the questions and the last outcome (inside a panel)."""
        import ipywidgets as widgets

        self.agent = agent
        idle = "" if quiet else f"<small>{html.escape(self._idle_text())}</small>"
        self.note = widgets.HTML(idle)
        self.box = widgets.VBox([self.note])
        self._questions: dict[str, tuple[Request, Any]] = {}
        self._on_change = on_change
        add_host(agent, self)

    def __repr__(self) -> str:
        return f"<ApprovalHost of {self.agent!r}: {len(self._questions)} open>"

    def _idle_text(self) -> str:
        return f"tool calls of {self.agent!r} sent from outside a cell are asked about here"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)  # type: ignore[no-untyped-call]

    def waiting(self) -> list[str]:
        """The open questions, one line each (`tool(args)`), oldest first."""
        return [request.describe() for request, _ in self._questions.values()]

    def close(self) -> None:
        remove_host(self.agent, self)
        self._questions.clear()
        close_tree(self.box)  # the note and every open question

    def why_not(self) -> str | None:
        return None

    def ask(self, request: Request) -> None:
        self._questions[request.id] = (request, question_widget(request))
        self._show()

    def settle(self, request: Request) -> None:
        _, shown = self._questions.pop(request.id, (None, None))
        if shown is not None:
            close_tree(shown)
        self.note.value = (
            f"<small>{html.escape(request.describe())}: {html.escape(request.outcome)}</small>"
        )
        self._show()

    def running(self, tool: str) -> None:
        return None

    def _show(self) -> None:
        self.box.children = [self.note, *(shown for _, shown in self._questions.values())]
        if self._on_change is not None:
            self._on_change()
