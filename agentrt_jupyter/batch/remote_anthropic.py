"""Anthropic's Message Batches through the anthropic SDK (`client.messages.batches`).

The rows go in the create call itself (`{"custom_id": row key, "params": the Messages
request the live path would send}`); an ended batch's results are streamed back as
JSONL, one `succeeded` / `errored` / `canceled` / `expired` result per row. A cancelled
batch ends with the rows it answered (`keeps_partial`); its `canceled` rows are left to
the driver (they are `cancelled`). A host without Message Batches answers 404: that is
`InvalidConfig` naming the host.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from ..conversation import Usage
from ..errors import InvalidConfig
from .batchapi import (
    JobStatus,
    Outcome,
    Phase,
    check_job_size,
    missing_api_as_invalid,
    quota_as_error,
    reply_outcome,
    single_prompt_request,
)

if TYPE_CHECKING:
    from .plan import MapPlan

MAX_REQUESTS = 100_000
"""Anthropic takes at most this many requests in one message batch."""


class AnthropicBatchApi:
    """Message batches on the runtime's `AsyncAnthropic` client for the run's endpoint."""

    provider = "anthropic"
    keeps_partial = True

    def __init__(self, backend: object) -> None:
        from ..backends.anthropic import AnthropicBackend

        if not isinstance(backend, AnthropicBackend):
            raise InvalidConfig(
                "mode='batch' on anthropic needs the anthropic backend", field="mode"
            )
        self._client = backend.client
        netloc = urllib.parse.urlsplit(str(self._client.base_url)).netloc.rpartition("@")[2]
        self._host = netloc or "api.anthropic.com"

    @contextlib.contextmanager
    def _errors(self, route: str | None = None, *, sent: bool = True) -> Iterator[None]:
        """Ours for the SDK's (`sent`: the request left, so a parse failure is the reply's);
        a 404 (or 405) on `route` means the host has no Message Batches."""
        from ..backends.anthropic import MessageStream, translate_errors

        call = MessageStream()
        call.answered = sent
        with (
            missing_api_as_invalid(self._host, "Message Batches API", route),
            quota_as_error(translate_errors(call)),
        ):
            yield

    async def submit(self, plan: MapPlan, prompts: dict[str, str], label: str) -> JobStatus:
        check_job_size(prompts, MAX_REQUESTS, "an Anthropic message batch")
        requests = [
            {"custom_id": key, "params": _params(plan, prompt)} for key, prompt in prompts.items()
        ]
        with self._errors("POST /v1/messages/batches", sent=False):
            batch = await self._client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        return _status(batch)

    async def poll(self, job: str) -> JobStatus:
        with self._errors():
            return _status(await self._client.messages.batches.retrieve(job))

    async def cancel(self, job: str) -> None:
        with self._errors():
            await self._client.messages.batches.cancel(job)

    async def results(self, status: JobStatus) -> AsyncIterator[tuple[str | None, Outcome]]:
        with self._errors():
            decoder = await self._client.messages.batches.results(status.id)
            async for entry in decoder:
                outcome = _outcome(entry.result)
                if outcome is not None:
                    yield entry.custom_id, outcome


def _params(plan: MapPlan, prompt: str) -> dict[str, Any]:
    """The live path's Messages request for one row, its extra body fields merged in."""
    from ..backends.anthropic import request_params

    params = request_params(single_prompt_request(plan, prompt))
    extra = params.pop("extra_body", {})
    return {**params, **extra}


def _status(batch: Any) -> JobStatus:
    """A message batch as a `JobStatus`; the shown state counts the requests done."""
    state = str(batch.processing_status)
    counts = batch.request_counts
    done = counts.succeeded + counts.errored + counts.canceled + counts.expired
    shown = f"{state} ({done}/{done + counts.processing})" if done + counts.processing else state
    if state != "ended":
        return JobStatus(str(batch.id), shown, "running", None, batch)
    phase: Phase = "cancelled" if batch.cancel_initiated_at is not None else "succeeded"
    return JobStatus(str(batch.id), shown, phase, None, batch)


def _outcome(result: Any) -> Outcome | None:
    """One row's result (None for a `canceled` row: it has none)."""
    kind = result.type
    if kind == "canceled":
        return None
    if kind == "expired":
        return Outcome("", None, Usage(), "the batch expired before this row was answered")
    if kind == "errored":
        return Outcome("", None, Usage(), _error_text(result.error))
    return _message(result.message)


def _error_text(response: Any) -> str:
    """An errored row's error as the live path words it: `500 api_error: message`."""
    from ..backends.anthropic import ERROR_CODES

    error = getattr(response, "error", None)
    kind = str(getattr(error, "type", "error"))
    message = getattr(error, "message", None) or response
    code = ERROR_CODES.get(kind)
    return f"{code} {kind}: {message}" if code is not None else f"{kind}: {message}"


def _message(message: Any) -> Outcome:
    from ..backends.anthropic import FINISH_REASONS, _Counts

    usage = _Counts().update(message.usage.model_dump())
    text = "".join(block.text for block in message.content if block.type == "text")
    reason = message.stop_reason
    finish = None if reason is None else FINISH_REASONS.get(str(reason), "OTHER")
    return reply_outcome(text, finish, usage, "stop reason", reason)
