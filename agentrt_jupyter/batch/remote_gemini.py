"""Gemini's Batch API through google-genai (`client.aio.batches`, `client.aio.files`).

A job of up to `inline_limit` bytes of requests goes inline in the create call; a larger
one is written as JSONL (`{"key", "request"}` per line), uploaded through the Files API
and answered as a JSONL file, downloaded to a temporary file and read line by line. Each
request carries its row's key (`metadata.key` inline), so results map back whatever
their order. A cancelled job's results are not collected (`keeps_partial` is False).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from ..conversation import Usage
from .batchapi import JobStatus, Outcome, Phase, keyed_entry, quota_as_error, reply_outcome

if TYPE_CHECKING:
    from .plan import MapPlan

_PHASES: dict[str, Phase] = {
    "JOB_STATE_PENDING": "pending",
    "JOB_STATE_QUEUED": "pending",
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}


def _errors() -> contextlib.AbstractContextManager[None]:
    from ..backends.gemini import translate_errors

    return quota_as_error(translate_errors([0]))


class GeminiBatchApi:
    """Batch jobs on the runtime's google-genai client."""

    provider = "gemini"
    keeps_partial = False

    def __init__(self, client: Any, inline_limit: int) -> None:
        self._client = client
        self._inline_limit = inline_limit

    async def submit(self, plan: MapPlan, prompts: dict[str, str], label: str) -> JobStatus:
        """Create the job inline, or from an uploaded JSONL file past `inline_limit`."""
        from google.genai import types

        generation, system = _generation(plan)
        size = sum(len(p) for p in prompts.values()) + len(prompts) * (
            len(json.dumps(generation)) + len(system or "") + 100
        )
        with _errors():
            if size <= self._inline_limit:
                config = {**generation, **({"systemInstruction": system} if system else {})}
                source: Any = [
                    types.InlinedRequest.model_validate(
                        {"contents": _contents(prompt), "config": config, "metadata": {"key": key}}
                    )
                    for key, prompt in prompts.items()
                ]
            else:
                source = await self._upload(prompts, generation, system, label)
            job = await self._client.aio.batches.create(
                model=plan.model, src=source, config={"display_name": label}
            )
        return _status(job)

    async def _upload(
        self, prompts: dict[str, str], generation: dict[str, Any], system: str | None, label: str
    ) -> str:
        """Write the requests as JSONL to a temporary file and upload it; the file's name."""
        request: dict[str, Any] = {"generationConfig": generation}
        if system:
            request["systemInstruction"] = {"parts": [{"text": system}]}
        handle, path = tempfile.mkstemp(prefix="agentrt-batch-", suffix=".jsonl")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                for key, prompt in prompts.items():
                    line = {"key": key, "request": {"contents": _contents(prompt), **request}}
                    out.write(json.dumps(line, separators=(",", ":")) + "\n")
            uploaded = await self._client.aio.files.upload(
                file=path, config={"mime_type": "jsonl", "display_name": label}
            )
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return str(uploaded.name)

    async def poll(self, job: str) -> JobStatus:
        with _errors():
            return _status(await self._client.aio.batches.get(name=job))

    async def cancel(self, job: str) -> None:
        with _errors():
            await self._client.aio.batches.cancel(name=job)

    async def results(self, status: JobStatus) -> AsyncIterator[tuple[str | None, Outcome]]:
        """Each result of a finished job with its row key (inline, or in a result file)."""
        destination = status.job.dest
        inline = getattr(destination, "inlined_responses", None)
        if inline is not None:
            for entry in inline:
                yield _inline_result(entry)
            return
        name = getattr(destination, "file_name", None)
        if name:
            async for result in self._file_results(name):
                yield result

    async def _file_results(self, name: str) -> AsyncIterator[tuple[str | None, Outcome]]:
        """The results in the job's JSONL file `name`, downloaded to a temporary file."""
        handle, path = tempfile.mkstemp(prefix="agentrt-batch-", suffix=".jsonl")
        os.close(handle)
        try:
            with _errors():
                await self._client.aio.files.download(file=name, destination=path)
            for line in _lines(path):
                result = _file_result(line)
                if result is not None:
                    yield result
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _status(job: Any) -> JobStatus:
    state = getattr(job, "state", None)
    name = "JOB_STATE_UNSPECIFIED" if state is None else str(getattr(state, "name", state))
    error = getattr(job, "error", None)
    message = None if error is None else str(getattr(error, "message", error))
    return JobStatus(str(job.name), name, _PHASES.get(name, "running"), message, job)


def _generation(plan: MapPlan) -> tuple[dict[str, Any], str | None]:
    """The rows' generationConfig (wire names) and system instruction."""
    config = plan.config
    thinking = {
        "thinkingBudget": config.thinking_budget,
        "includeThoughts": config.include_thoughts or None,
    }
    fields: dict[str, Any] = {
        "temperature": config.temperature,
        "topP": config.top_p,
        "topK": config.top_k,
        "maxOutputTokens": config.max_output_tokens,
        "stopSequences": list(config.stop_sequences) or None,
        "seed": config.seed,
        "responseMimeType": config.response_mime_type,
        "responseJsonSchema": config.response_schema
        if isinstance(config.response_schema, dict)
        else None,
        "thinkingConfig": {k: v for k, v in thinking.items() if v is not None} or None,
    }
    return {k: v for k, v in fields.items() if v is not None}, config.system_instruction


def _contents(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "parts": [{"text": prompt}]}]


def _inline_result(entry: Any) -> tuple[str | None, Outcome]:
    key = (entry.metadata or {}).get("key")
    if entry.error is not None:
        return key, Outcome("", None, Usage(), _error_text(entry.error))
    return key, _reply(entry.response)


def _file_result(line: str) -> tuple[str | None, Outcome] | None:
    """One line of a result file (None: not a result)."""
    from google.genai import types

    keyed = keyed_entry(line, "key")
    if keyed is None:
        return None
    key, entry = keyed
    if isinstance(entry.get("response"), dict):
        return key, _reply(types.GenerateContentResponse.model_validate(entry["response"]))
    problem = entry.get("error") or entry.get("status") or "no response"
    return key, Outcome("", None, Usage(), _error_text(problem))


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield line


def _reply(response: Any) -> Outcome:
    """The outcome of one GenerateContentResponse."""
    usage = Usage.from_metadata(getattr(response, "usage_metadata", None))
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        feedback = getattr(response, "prompt_feedback", None)
        reason = getattr(feedback, "block_reason", None)
        why = (
            f"the prompt was blocked ({getattr(reason, 'value', reason)})" if reason else "no reply"
        )
        return Outcome("", None, usage, why)
    candidate = candidates[0]
    finish = candidate.finish_reason
    finish_name = str(getattr(finish, "value", finish)) if finish is not None else None
    parts = (candidate.content.parts if candidate.content else None) or []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    return reply_outcome(text, finish_name, usage, "finish reason", finish_name)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    else:
        code, message = getattr(error, "code", None), getattr(error, "message", None)
    return f"{code} {message or 'error'}" if code is not None else str(message or error)
