"""Every error the runtime raises, importable from `agentrt_jupyter`.

AgentError
├── UsageProblem (caller misuse; also the closest built-in)
│   ├── InvalidConfig (ValueError)          a config field is wrong
│   ├── InvalidContent (TypeError)          content the model cannot take
│   ├── AgentNotFound (KeyError)            no agent with that id or name
│   ├── ConversationExists (ValueError)     a stored conversation has that name
│   ├── ConversationInUse (RuntimeError)    another live kernel writes that conversation
│   ├── AgentShutDown (RuntimeError)        the agent was shut down
│   ├── RuntimeClosed (RuntimeError)        the runtime was shut down
│   ├── WrongThread (RuntimeError)          a blocking call where it would deadlock
│   └── CostNotApproved (RuntimeError)      an operator's estimated cost was not approved
├── Timeout (TimeoutError)                  a bounded wait ran out
├── StoreError (OSError)                    the conversation store cannot be used
├── OperatorStopped                         an operator's round left rows unanswered
├── ToolError                               a tool could not do what the model asked
│   └── McpServerError (ConnectionError)    an MCP server would not start, died or hung
└── TurnError                               a turn did not complete
    ├── TurnCancelled                       cancelled; partial text kept
    ├── StreamBroken                        the stream was cut; partial text kept
    ├── ToolStepLimit                       the model kept calling tools
    ├── QuotaExceeded                       429 that waiting will not fix
    ├── ReplyBlocked                        the reply was stopped (SAFETY, RECITATION, …)
    ├── TurnStoreError (also a StoreError)  the store failed while recording the turn
    ├── ReplyInvalid                        the reply does not match the requested schema
    └── BackendError                        the model service refused the call
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by agentrt_jupyter."""


class UsageProblem(AgentError):
    """The caller asked for something that cannot be done as asked."""


class InvalidConfig(UsageProblem, ValueError):
    """A configuration field has a wrong value."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidContent(UsageProblem, TypeError):
    """Content that cannot be sent to the model."""


class AgentNotFound(UsageProblem, KeyError):
    """No agent with that id or name."""

    def __init__(self, agent: str) -> None:
        super().__init__(agent)
        self.agent = agent

    def __str__(self) -> str:
        return f"no agent {self.agent!r}: see runtime.agents() for the live ones"


class ConversationExists(UsageProblem, ValueError):
    """A stored conversation already has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"a stored conversation named {name!r} exists: runtime.resume({name!r}) continues it, "
            f"runtime.delete({name!r}) erases it"
        )
        self.name = name


class ConversationInUse(UsageProblem, RuntimeError):
    """Another live kernel or process holds this conversation's writer lease."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(
            f"conversation {name!r} is being written by {holder}: use another name, stop that "
            f"kernel, or take it over with resume({name!r}, take_over=True)"
        )
        self.name = name
        self.holder = holder


class AgentShutDown(UsageProblem, RuntimeError):
    """The agent was shut down and takes no more turns."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"agent {agent!r} was shut down; create or resume an agent to go on")
        self.agent = agent


class RuntimeClosed(UsageProblem, RuntimeError):
    """The runtime was shut down."""


class WrongThread(UsageProblem, RuntimeError):
    """A blocking call made on a thread where waiting would deadlock (the loop, a tool)."""


class CostNotApproved(UsageProblem, RuntimeError):
    """An operator's estimated cost passed `confirm_cost` and was not approved: nothing sent."""

    def __init__(self, message: str, *, usd: float | None, threshold: float) -> None:
        super().__init__(message)
        self.usd = usd
        self.threshold = threshold


class Timeout(AgentError, TimeoutError):
    """A bounded wait ran out before the thing waited for happened."""


class StoreError(AgentError, OSError):
    """The conversation store file cannot be read or written; `path` names it; `locked`:
    another process held it (trying again may work)."""

    def __init__(self, message: str, *, path: str | None = None, locked: bool = False) -> None:
        super().__init__(f"{message} (store: {path})" if path else message)
        self.path = path
        self.locked = locked

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ToolError(AgentError):
    """A tool could not do what the model asked; raised inside a tool, the model reads it."""


class McpServerError(ToolError, ConnectionError):
    """An MCP server would not start, died, hung or broke the protocol; `server` names it."""

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(f"MCP server {server!r}: {message}")
        self.server = server


class TurnError(AgentError):
    """A turn ended without a complete reply; whatever text arrived is kept."""

    def __init__(self, message: str, *, partial_text: str = "", agent: str | None = None) -> None:
        super().__init__(message)
        self.partial_text = partial_text
        self.agent = agent


class TurnCancelled(TurnError):
    """The turn was cancelled; the partial reply is in history, marked cancelled."""


class StreamBroken(TurnError):
    """The reply stream was cut (connection dropped, stalled, or truncated)."""


class ToolStepLimit(TurnError):
    """The model asked for more tool calls than `max_tool_steps` allows."""


class QuotaExceeded(TurnError):
    """A limit that waiting will not fix here: `scope` is "day", "zero" (no quota for the
    model), "minute" (retries used up), "billing" (the provider wants credit) or "budget"
    (the user's daily budget, set by an admin)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        quota_id: str | None = None,
        scope: str = "unknown",
        partial_text: str = "",
        agent: str | None = None,
    ) -> None:
        super().__init__(message, partial_text=partial_text, agent=agent)
        self.retry_after = retry_after
        self.quota_id = quota_id
        self.scope = scope


class ReplyBlocked(TurnError):
    """The service stopped the reply for a policy reason; `finish_reason` says which."""

    def __init__(
        self, message: str, *, finish_reason: str, partial_text: str = "", agent: str | None = None
    ) -> None:
        super().__init__(message, partial_text=partial_text, agent=agent)
        self.finish_reason = finish_reason


class TurnStoreError(TurnError, StoreError):
    """The store failed while a turn was being recorded; the turn stops, nothing is sent."""

    def __init__(self, cause: StoreError | ConversationInUse, *, agent: str | None = None) -> None:
        super().__init__(str(cause), agent=agent)
        self.path = getattr(cause, "path", None)
        self.cause = cause
        """The store's error, or the `ConversationInUse` of a conversation taken over."""


class OperatorStopped(AgentError):
    """A semantic operator (topk, join, agg, dedupe) stopped before its answer: a round's
    rows were cancelled or skipped (a cancel, a budget, a per-day quota). The answered
    ones are kept: calling it again sends only the rest. `progress` is the round's last
    `BatchProgress`."""

    def __init__(self, message: str, *, progress: object = None) -> None:
        super().__init__(message)
        self.progress = progress


class ReplyInvalid(TurnError):
    """The reply is not what the schema asked for; `raw_text` keeps it, `problem` says why."""

    def __init__(
        self, message: str, *, raw_text: str, problem: str, agent: str | None = None
    ) -> None:
        super().__init__(message, partial_text=raw_text, agent=agent)
        self.raw_text = raw_text
        self.problem = problem


class BackendError(TurnError):
    """The model service answered with an error; `code` and `status` are the service's."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: str | None = None,
        partial_text: str = "",
        agent: str | None = None,
    ) -> None:
        super().__init__(message, partial_text=partial_text, agent=agent)
        self.code = code
        self.status = status
