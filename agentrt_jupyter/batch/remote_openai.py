"""OpenAI's Batch API through the openai SDK (`client.files`, `client.batches`).

The rows are one JSONL file of `/v1/chat/completions` requests (`custom_id` = the row's
key, the body the live path would send, without streaming), uploaded with purpose
"batch"; the job reads it and writes an output file (and an error file for the requests
that failed), streamed back line by line. A cancelled or expired job keeps the rows it
answered in its output file (`keeps_partial`). A server without the Files or Batch API
(Ollama, most compatible servers) answers 404: that is `InvalidConfig` naming the host.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Final

from ..backends.base import excerpt
from ..conversation import Usage
from ..errors import InvalidConfig
from .batchapi import (
    JobStatus,
    Outcome,
    Phase,
    check_job_size,
    keyed_entry,
    missing_api_as_invalid,
    quota_as_error,
    reply_outcome,
    single_prompt_request,
)

if TYPE_CHECKING:
    from ..backends.openai import OpenAIBackend
    from .plan import MapPlan

ENDPOINT: Final = "/v1/chat/completions"
MAX_REQUESTS = 50_000
"""OpenAI takes at most this many requests in one batch."""
_PHASES: dict[str, Phase] = {
    "validating": "pending",
    "completed": "succeeded",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}
"""Statuses not here (in_progress, finalizing, cancelling) are `running`."""


class OpenAIBatchApi:
    """Batches on the runtime's `AsyncOpenAI` client for the run's endpoint."""

    provider = "openai"
    keeps_partial = True

    def __init__(self, backend: object) -> None:
        from ..backends.openai import OpenAIBackend

        if not isinstance(backend, OpenAIBackend):
            raise InvalidConfig("mode='batch' on openai needs the openai backend", field="mode")
        self._backend: OpenAIBackend = backend
        self._client = backend.client
        netloc = urllib.parse.urlsplit(backend.base_url or "").netloc.rpartition("@")[2]
        self._host = netloc or "api.openai.com"

    @contextlib.contextmanager
    def _errors(self, route: str | None = None) -> Iterator[None]:
        """Ours for the SDK's; a 404 (or 405) on `route` means the host has no Batch API."""
        with (
            missing_api_as_invalid(self._host, "OpenAI Batch API", route),
            quota_as_error(self._backend.errors()),
        ):
            yield

    async def submit(self, plan: MapPlan, prompts: dict[str, str], label: str) -> JobStatus:
        check_job_size(prompts, MAX_REQUESTS, "an OpenAI batch")
        data = b"".join(_request_line(plan, key, prompt) for key, prompt in prompts.items())
        with self._errors("POST /files"):
            uploaded = await self._client.files.create(
                file=(f"{label.replace(' ', '-')}.jsonl", data), purpose="batch"
            )
        with self._errors("POST /batches"):
            batch = await self._client.batches.create(
                input_file_id=uploaded.id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"agentrt": label},
            )
        return _status(batch)

    async def poll(self, job: str) -> JobStatus:
        with self._errors():
            return _status(await self._client.batches.retrieve(job))

    async def cancel(self, job: str) -> None:
        with self._errors():
            await self._client.batches.cancel(job)

    async def results(self, status: JobStatus) -> AsyncIterator[tuple[str | None, Outcome]]:
        """The lines of the output file, then those of the error file."""
        batch = status.job
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            with self._errors():
                async with self._client.files.with_streaming_response.content(file_id) as response:
                    async for line in response.iter_lines():
                        result = _result(line) if line.strip() else None
                        if result is not None:
                            yield result


def _request_line(plan: MapPlan, key: str, prompt: str) -> bytes:
    """One row as a line of the input file: the live path's body, not streamed."""
    from ..backends.openai import chat_body

    body = chat_body(single_prompt_request(plan, prompt), "openai")
    body.pop("stream", None)
    body.pop("stream_options", None)
    line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def _status(batch: Any) -> JobStatus:
    """A batch as a `JobStatus`; the shown state counts the requests done when known."""
    state = str(batch.status)
    counts = batch.request_counts
    shown = state
    if counts is not None and counts.total:
        shown = f"{state} ({counts.completed + counts.failed}/{counts.total})"
    errors = getattr(batch.errors, "data", None) or []
    message = "; ".join(str(e.message or e.code) for e in errors) or None
    return JobStatus(str(batch.id), shown, _PHASES.get(state, "running"), message, batch)


def _result(line: str) -> tuple[str | None, Outcome] | None:
    """One line of an output or error file (None: not a result)."""
    keyed = keyed_entry(line, "custom_id")
    if keyed is None:
        return None
    key, entry = keyed
    response = entry.get("response")
    error = entry.get("error")
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return key, Outcome("", None, Usage(), f"{code or 'error'}: {message or 'no message'}")
    if not isinstance(response, dict):
        return key, Outcome("", None, Usage(), "the batch gave no response for this row")
    body = response.get("body")
    code = response.get("status_code")
    if code != 200:
        return key, Outcome("", None, Usage(), _error_text(code, body))
    return key, _completion(body)


def _error_text(code: object, body: object) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return f"{code} {kind}: {excerpt(error.get('message') or error)}"
    return f"{code} error: {excerpt(body)}"


def _completion(body: object) -> Outcome:
    """The outcome of one chat completion."""
    from openai.types.chat import ChatCompletion

    from ..backends.openai import FINISH_REASONS, usage_of

    try:
        completion = ChatCompletion.model_validate(body)
        usage = usage_of(completion.usage) if completion.usage is not None else Usage()
    except (ValueError, TypeError) as exc:
        return Outcome("", None, Usage(), f"a reply not in Chat Completions' format: {exc}")
    if not completion.choices:
        return Outcome("", None, usage, "no reply")
    choice = completion.choices[0]
    text = choice.message.content or ""
    reason = choice.finish_reason  # always there: the SDK's model requires it
    finish = FINISH_REASONS.get(str(reason), "OTHER")
    return reply_outcome(text, finish, usage, "finish reason", reason)
