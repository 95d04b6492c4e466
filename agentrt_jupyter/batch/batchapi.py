"""What `remote.py` needs of a provider's Batch API: submit, poll, collect, cancel.

One small class per provider implements `BatchApi` (`remote_gemini`, `remote_openai`,
`remote_anthropic`); each imports its SDK when made and turns every SDK error into ours
at its one boundary (the backend module's translator, then `quota_as_error`). The driver
in `remote.py` never sees a provider's types: a job is its id, its state a `JobStatus`,
its results `(row key, Outcome)` pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..conversation import Usage
from ..errors import QuotaExceeded

if TYPE_CHECKING:
    from .plan import MapPlan

Phase = Literal["pending", "running", "succeeded", "failed", "cancelled", "expired"]
FINAL_PHASES: frozenset[Phase] = frozenset({"succeeded", "failed", "cancelled", "expired"})


@dataclass(frozen=True)
class Outcome:
    """One row's result in a job: the reply's text, its finish reason, its usage, and
    the problem if the row failed (the text is then whatever came)."""

    text: str
    finish_reason: str | None
    usage: Usage
    problem: str | None = None


@dataclass(frozen=True)
class JobStatus:
    """A job as last polled: its id (what it is recorded, polled and cancelled by), the
    provider's own state name (shown in the progress), the phase the driver acts on, the
    job's error if it failed, and the provider's job object (what `results` reads)."""

    id: str
    state: str
    phase: Phase
    error: str | None = None
    job: Any = None

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES


class BatchApi(Protocol):
    """One provider's Batch API on the runtime loop; every error raised is ours."""

    provider: str
    keeps_partial: bool
    """A cancelled (or expired) job still gives the results of the rows it finished."""

    async def submit(self, plan: MapPlan, prompts: dict[str, str], label: str) -> JobStatus:
        """Create one job of the rows `prompts` (row key -> prompt); its status. `label`
        names the job where the provider shows one."""
        ...

    async def poll(self, job: str) -> JobStatus: ...

    def results(self, status: JobStatus) -> AsyncIterator[tuple[str | None, Outcome]]:
        """Each result of an ended job with its row key (rows without one are left out)."""
        ...

    async def cancel(self, job: str) -> None: ...


@contextlib.contextmanager
def quota_as_error(boundary: AbstractContextManager[None]) -> Iterator[None]:
    """A backend's error boundary, with a 429 as `QuotaExceeded` (a Batch API call does
    not wait for quota: the poll backs off, a submit fails its rows)."""
    from ..backends.base import QuotaHit

    try:
        with boundary:
            yield
    except QuotaHit as hit:
        info = hit.info
        raise QuotaExceeded(
            f"the Batch API is rate limited: {info.message}",
            retry_after=info.retry_after,
            quota_id=info.quota_id,
            scope=info.scope,
        ) from None


def single_prompt_request(plan: MapPlan, prompt: str) -> Any:
    """A row as the one-message `ModelRequest` the live path would send (no tools)."""
    from ..backends.base import ModelRequest
    from ..content import TextPart
    from ..conversation import ConversationMessage

    message = ConversationMessage(role="user", parts=(TextPart(prompt),), turn=1)
    return ModelRequest(
        model=plan.model,
        messages=[message],
        system_instruction=plan.config.system_instruction,
        config=plan.config,
        with_tools=False,
    )
