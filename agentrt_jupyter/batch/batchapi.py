"""What `remote.py` needs of a provider's Batch API: submit, poll, collect, cancel.

One small class per provider implements `BatchApi` (`remote_gemini`, `remote_openai`,
`remote_anthropic`); each imports its SDK when made and turns every SDK error into ours
at its one boundary (the backend module's translator, then `quota_as_error`). The driver
in `remote.py` never sees a provider's types: a job is its id, its state a `JobStatus`,
its results `(row key, Outcome)` pairs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..backends.base import BLOCKED_FINISH_REASONS
from ..conversation import Usage
from ..errors import BackendError, InvalidConfig, QuotaExceeded

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


@contextlib.contextmanager
def missing_api_as_invalid(host: str, api: str, route: str | None) -> Iterator[None]:
    """A 404 (or 405) on `route` means the server at `host` has no `api`: `InvalidConfig`
    pointing to mode='live' (no `route`: every error stays as it is)."""
    try:
        yield
    except BackendError as exc:
        if route is None or exc.code not in (404, 405):
            raise
        raise InvalidConfig(
            f"the server at {host} has no {api} ({route} answered {exc.code}): use mode='live'",
            field="mode",
        ) from None


def check_job_size(prompts: dict[str, str], most: int, job: str) -> None:
    """`InvalidConfig` for more rows than one `job` (as the message names it) takes."""
    if len(prompts) > most:
        raise InvalidConfig(
            f"{job} takes at most {most:,} requests, this one has {len(prompts):,}: "
            "map the frame in parts",
            field="mode",
        )


def keyed_entry(line: str, key_field: str) -> tuple[str | None, dict[str, Any]] | None:
    """One JSONL result line as its row key (from `key_field`) and its object (None: the
    line is not a JSON object)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    key = entry.get(key_field)
    return (str(key) if key is not None else None), entry


def reply_outcome(
    text: str, finish: str | None, usage: Usage, reason_name: str, reason: object
) -> Outcome:
    """A reply's outcome from its finish reason (ours; None: the reply has none, it was
    cut off): a problem where the service stopped it. `reason_name` and `reason`: the
    provider's word for it ("stop reason") and its own value, for the message."""
    if finish in BLOCKED_FINISH_REASONS:
        why = f"the service stopped the reply ({reason_name} {reason})"
        return Outcome(text, finish, usage, why)
    if finish is None:
        return Outcome(text, None, usage, f"the reply has no {reason_name} (truncated)")
    return Outcome(text, finish, usage)


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
