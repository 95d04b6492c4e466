"""`mode="batch"`: the rows go to the Gemini Batch API as one job, half price.

The trade: Google bills batch jobs at 50 % of the interactive price, but a job may take
up to 24 hours (most finish well within that) and nothing comes back until the whole job
has ended. Concurrency, rpm and tpm do not apply; budgets are checked against estimates
before the job is submitted (the rows past the budget are `skipped`).

A job of up to `INLINE_LIMIT_BYTES` of requests goes inline in the create call; a larger
one is written as JSONL (`{"key", "request"}` per line), uploaded through the Files API
and answered as a JSONL file, downloaded to a temporary file and read line by line. Each
request carries its row's key, so results map back whatever their order.

The job's name is written to the results table as soon as it is created: if the kernel
dies while the job runs, calling the same map again picks the job's results up instead
of paying for the rows twice (rows still missing afterwards go into a new job). The job
is polled every `POLL_FIRST` seconds, growing to `POLL_MOST`. Cancel cancels the job at
the service; its rows are `cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..backends.base import BLOCKED_FINISH_REASONS
from ..conversation import Usage
from ..errors import AgentError, BackendError, InvalidConfig, QuotaExceeded, TurnError
from .outcomes import CANCELLED, ERROR, SKIPPED, error_kind
from .records import StoredRow
from .run import YIELD_EVERY
from .schema import SchemaMismatch

if TYPE_CHECKING:
    from .run import BatchRun

log = logging.getLogger("agentrt_jupyter")

INLINE_LIMIT_BYTES = 4 * 1024 * 1024
"""Jobs with more request bytes than this go as a JSONL file (Gemini takes 20 MB inline)."""
POLL_FIRST = 0.25
POLL_MOST = 30.0
POLL_RETRIES = 5
"""Failed polls in a row (5xx, dropped connections) before the job is given up on."""
Outcome = tuple[str, str | None, Usage, str | None]
"""One result: the reply's text, its finish reason, its usage, and the problem if any."""
_FINAL = {
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "succeeded",
}


async def answer_in_batch(run: BatchRun) -> None:
    """Answer `run`'s missing rows through the Batch API (on the runtime loop)."""
    run.state = "submitting"
    missing, prompts = await _missing_rows(run)
    if not missing:
        return
    client = await _client(run)
    if client is None:
        return
    try:
        await _collect_earlier_jobs(run, client, missing)
        if not missing or run.cancel_requested:
            _cancel_rows(run, missing)
            return
        await _submit_and_follow(run, client, missing, prompts)
    finally:
        run.controller.release_all()


async def _missing_rows(run: BatchRun) -> tuple[dict[str, list[int]], dict[str, str]]:
    """The rows to ask for, by key: their positions, and the prompt."""
    missing: dict[str, list[int]] = {}
    prompts: dict[str, str] = {}
    async for position, prompt, key in run.unanswered():
        missing.setdefault(key, []).append(position)
        prompts[key] = prompt
    return missing, prompts


async def _client(run: BatchRun) -> Any:
    """The runtime's google-genai client for the run's endpoint (None: rows were skipped)."""
    try:
        from ..backends.gemini import GeminiBackend

        backend = await run.runtime.aio.backend(run.plan.config)
        if not isinstance(backend, GeminiBackend):
            raise InvalidConfig("mode='batch' needs the google-genai backend", field="mode")
        return backend.client
    except AgentError as exc:
        reason = f"stopped: the model backend is not available: {exc}"
        run.stop(reason)
        run.skip_pending(reason)
        return None


async def _collect_earlier_jobs(run: BatchRun, client: Any, missing: dict[str, list[int]]) -> None:
    """The results of jobs an earlier call submitted and never collected (a kernel died)."""
    earlier = [] if run.plan.refresh else run.records.open_jobs()
    for name in earlier:
        try:
            if await _follow(run, client, name, missing, time.monotonic(), {}):
                return
        except TurnError as exc:  # gone (deleted, expired) or unreachable: send the rows anew
            log.warning("the earlier batch job %s cannot be collected: %s", name, exc)
            run.records.close_job(name, "lost")


async def _submit_and_follow(
    run: BatchRun, client: Any, missing: dict[str, list[int]], prompts: dict[str, str]
) -> None:
    """Submit the rows within the budget as one job, and follow it to its results."""
    chosen = _within_budget(run, missing, prompts)
    if not chosen:
        return
    try:
        name, keys = await _submit(run, client, chosen, prompts)
    except (TurnError, InvalidConfig) as exc:
        _fail_rows(run, missing, chosen, str(exc), error_kind(exc))
        return
    run.records.add_job(name)
    try:
        await _follow(run, client, name, missing, time.monotonic(), dict.fromkeys(keys))
    except TurnError as exc:  # the job stays recorded: the same call later collects it
        why = f"the batch job {name} could not be followed ({exc}): run the same call again"
        _fail_rows(run, missing, keys, why, error_kind(exc))


def _fail_rows(
    run: BatchRun, missing: dict[str, list[int]], keys: Iterable[str], error: str, kind: str
) -> None:
    for key in keys:
        for position in missing.pop(key, []):
            run.finish(position, ERROR, error=error, kind=kind)


def _within_budget(
    run: BatchRun, missing: dict[str, list[int]], prompts: dict[str, str]
) -> list[str]:
    """The keys to submit: all, or the first ones whose estimates fit the budget (each
    reserved in the controller); the rows past it are skipped."""
    controller = run.controller
    chosen: list[str] = []
    for key in list(missing):
        estimate = controller.estimate(prompts[key])
        stopped = run.stopped
        over = stopped.reason if stopped is not None else controller.over_budget(estimate)
        if over is not None:  # this row and every one after it
            run.stop(over)
            for position in missing.pop(key):
                run.finish(position, SKIPPED, error=over)
            continue
        controller.reserve(estimate)
        chosen.append(key)
    return chosen


def _generation(run: BatchRun) -> tuple[dict[str, Any], str | None]:
    """The rows' generationConfig (wire names) and system instruction."""
    config = run.plan.config
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


async def _submit(
    run: BatchRun, client: Any, keys: list[str], prompts: dict[str, str]
) -> tuple[str, list[str]]:
    """Create the job (inline or from an uploaded JSONL file); its name and its keys."""
    from google.genai import types

    from ..backends.gemini import translate_errors

    generation, system = _generation(run)
    display = f"agentrt map {run.plan.run_key[:12]}"
    size = sum(len(prompts[key]) for key in keys) + len(keys) * (
        len(json.dumps(generation)) + len(system or "") + 100
    )
    with _translate(translate_errors):
        if size <= INLINE_LIMIT_BYTES:
            config = {**generation, **({"systemInstruction": system} if system else {})}
            source: Any = [
                types.InlinedRequest.model_validate(
                    {
                        "contents": _contents(prompts[key]),
                        "config": config,
                        "metadata": {"key": key},
                    }
                )
                for key in keys
            ]
        else:
            source = await _upload(run, client, keys, prompts, generation, system)
        job = await client.aio.batches.create(
            model=run.plan.model, src=source, config={"display_name": display}
        )
    run.job = str(job.name)
    run.job_state = _state_name(job)
    run.changed()
    return run.job, keys


async def _upload(
    run: BatchRun,
    client: Any,
    keys: list[str],
    prompts: dict[str, str],
    generation: dict[str, Any],
    system: str | None,
) -> str:
    """Write the requests as JSONL to a temporary file and upload it; the file's name."""
    request: dict[str, Any] = {"generationConfig": generation}
    if system:
        request["systemInstruction"] = {"parts": [{"text": system}]}
    handle, path = tempfile.mkstemp(prefix="agentrt-batch-", suffix=".jsonl")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for key in keys:
                line = {"key": key, "request": {"contents": _contents(prompts[key]), **request}}
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
        uploaded = await client.aio.files.upload(
            file=path,
            config={"mime_type": "jsonl", "display_name": f"agentrt map {run.plan.run_key[:12]}"},
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return str(uploaded.name)


async def _follow(
    run: BatchRun,
    client: Any,
    name: str,
    missing: dict[str, list[int]],
    submitted: float,
    keys: dict[str, None],
) -> bool:
    """Poll job `name` to its end and give its rows their results; True if cancelled."""
    run.job = name
    job = await _poll(run, client, name)
    if job is None:  # cancelled by us
        with contextlib.suppress(Exception):
            await client.aio.batches.cancel(name=name)
        run.records.close_job(name, "cancelled")
        _cancel_rows(run, {k: missing.pop(k) for k in list(keys) if k in missing})
        return True
    run.job_state = _state_name(job)
    state = _FINAL.get(run.job_state or "", "failed")
    if state == "succeeded":
        await _collect(run, client, job, missing, time.monotonic() - submitted)
    else:
        _job_failed(run, job, f"the batch job {name} ended {state}", state, missing, keys)
    for key in [k for k in keys if k in missing]:
        for position in missing.pop(key):
            run.finish(position, ERROR, error=f"no result for this row in {name}")
    run.records.close_job(name, "collected" if state == "succeeded" else state)
    return False


def _job_failed(
    run: BatchRun,
    job: Any,
    message: str,
    state: str,
    missing: dict[str, list[int]],
    keys: dict[str, None],
) -> None:
    """The job ended without results: its rows are errors (cancelled, if it was)."""
    if getattr(job, "error", None) is not None:
        message += f": {getattr(job.error, 'message', job.error)}"
    status = CANCELLED if state == "cancelled" else ERROR
    for key in [k for k in keys if k in missing]:
        for position in missing.pop(key):
            run.finish(position, status, error=message, kind="BatchJob " + state)


async def _collect(
    run: BatchRun, client: Any, job: Any, missing: dict[str, list[int]], latency: float
) -> None:
    """Give each result of the finished `job` to the rows with its key."""
    run.state = "collecting"
    answered = 0
    async for key, outcome in _results(client, job):
        answered += 1
        if answered % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        _give(run, key, outcome, missing, latency)


def _give(
    run: BatchRun,
    key: str | None,
    outcome: Outcome,
    missing: dict[str, list[int]],
    latency: float,
) -> None:
    """One result of the job, to every row with its key (kept even if no row has it now)."""
    text, _finish, usage, problem = outcome
    tokens_in, tokens_out = usage.split()
    tokens = (tokens_in or 0, tokens_out or 0)  # a batch result's usage is always reported
    run.controller.spend(*tokens)
    positions = missing.pop(key, []) if key is not None else []
    values = None
    if problem is None and run.plan.schema is not None:
        try:
            values = run.plan.schema.parse(text)
        except SchemaMismatch as exc:
            problem = str(exc)
    if problem is not None:
        for position in positions:
            run.finish(
                position,
                ERROR,
                error=problem,
                kind="BatchResult",
                tokens=tokens,
                latency=latency,
                attempts=1,
            )
        return
    if key is not None and not positions:
        run.keep(key, StoredRow(text, *tokens, latency, 1, run.plan.model))
    for number, position in enumerate(positions):
        run.finish_ok(position, text, values, tokens, latency, 1, key=key if number == 0 else None)


async def _poll(run: BatchRun, client: Any, name: str) -> Any:
    """The job once it has ended, or None if the run was cancelled first."""
    from ..backends.gemini import translate_errors

    delay, failures = POLL_FIRST, 0
    while True:
        try:
            with _translate(translate_errors):
                job = await client.aio.batches.get(name=name)
        except BackendError as exc:
            failures += 1
            if failures >= POLL_RETRIES or (exc.code is not None and exc.code < 500):
                raise
        else:
            failures = 0
            run.job_state = _state_name(job)
            if run.job_state in ("JOB_STATE_PENDING", "JOB_STATE_QUEUED"):
                run.state = "pending"
            elif run.job_state not in _FINAL:
                run.state = "running"
            run.changed()
            if run.job_state in _FINAL:
                return job
        if await run.until_cancelled(asyncio.sleep(delay)):
            return None
        delay = min(POLL_MOST, delay * 1.5)


async def _results(client: Any, job: Any) -> AsyncIterator[tuple[str | None, Outcome]]:
    """Each result of a finished job with its row key (inline, or in a result file)."""
    destination = job.dest
    inline = getattr(destination, "inlined_responses", None)
    if inline is not None:
        for entry in inline:
            yield _inline_result(entry)
        return
    name = getattr(destination, "file_name", None)
    if name:
        async for result in _file_results(client, name):
            yield result


def _inline_result(entry: Any) -> tuple[str | None, Outcome]:
    key = (entry.metadata or {}).get("key")
    if entry.error is not None:
        return key, ("", None, Usage(), _error_text(entry.error))
    return key, _reply(entry.response)


async def _file_results(client: Any, name: str) -> AsyncIterator[tuple[str | None, Outcome]]:
    """The results in the job's JSONL file `name`, downloaded to a temporary file."""
    from ..backends.gemini import translate_errors

    handle, path = tempfile.mkstemp(prefix="agentrt-batch-", suffix=".jsonl")
    os.close(handle)
    try:
        with _translate(translate_errors):
            await client.aio.files.download(file=name, destination=path)
        for line in _lines(path):
            result = _file_result(line)
            if result is not None:
                yield result
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _file_result(line: str) -> tuple[str | None, Outcome] | None:
    """One line of a result file (None: not a result)."""
    from google.genai import types

    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    key = entry.get("key")
    key = str(key) if key is not None else None
    if isinstance(entry.get("response"), dict):
        return key, _reply(types.GenerateContentResponse.model_validate(entry["response"]))
    problem = entry.get("error") or entry.get("status") or "no response"
    return key, ("", None, Usage(), _error_text(problem))


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield line


def _reply(response: Any) -> Outcome:
    """(text, finish reason, usage, problem) of one GenerateContentResponse."""
    usage = Usage.from_metadata(getattr(response, "usage_metadata", None))
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        feedback = getattr(response, "prompt_feedback", None)
        reason = getattr(feedback, "block_reason", None)
        why = (
            f"the prompt was blocked ({getattr(reason, 'value', reason)})" if reason else "no reply"
        )
        return "", None, usage, why
    candidate = candidates[0]
    finish = candidate.finish_reason
    finish_name = str(getattr(finish, "value", finish)) if finish is not None else None
    parts = (candidate.content.parts if candidate.content else None) or []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    if finish_name in BLOCKED_FINISH_REASONS:
        return (
            text,
            finish_name,
            usage,
            f"the service stopped the reply (finish reason {finish_name})",
        )
    if finish_name is None:
        return text, None, usage, "the reply has no finish reason (truncated)"
    return text, finish_name, usage, None


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    else:
        code, message = getattr(error, "code", None), getattr(error, "message", None)
    return f"{code} {message or 'error'}" if code is not None else str(message or error)


def _state_name(job: Any) -> str | None:
    state = getattr(job, "state", None)
    return None if state is None else str(getattr(state, "name", state))


def _cancel_rows(run: BatchRun, rows: dict[str, list[int]]) -> None:
    for positions in rows.values():
        for position in positions:
            run.finish(position, CANCELLED, error="cancelled")
    rows.clear()


@contextlib.contextmanager
def _translate(boundary: Any) -> Iterator[None]:
    """The backend's error boundary, with a 429 as `QuotaExceeded` (we do not wait here)."""
    from ..backends.base import QuotaHit

    try:
        with boundary([0]):
            yield
    except QuotaHit as hit:
        info = hit.info
        raise QuotaExceeded(
            f"the Batch API is rate limited: {info.message}",
            retry_after=info.retry_after,
            quota_id=info.quota_id,
            scope=info.scope,
        ) from None
