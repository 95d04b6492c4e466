"""`mode="batch"`: the rows go to a provider's Batch API as one job, half price.

The trade: Gemini, OpenAI and Anthropic bill batch jobs at 50 % of the interactive price
(`prices.BATCH_DISCOUNT`), but a job may take up to 24 hours (most finish well within
that) and nothing comes back until the whole job has ended. Concurrency, rpm and tpm do
not apply; budgets are checked against estimates before the job is submitted (the rows
past the budget are `skipped`).

This module drives a job whatever the provider; each provider's API is a small class
behind `batchapi.BatchApi`: `remote_gemini` (google-genai), `remote_openai` (the openai
SDK's Files and Batch APIs, one /v1/chat/completions request per row) and
`remote_anthropic` (Message Batches). Each request carries its row's key, so results map
back whatever their order.

The job's id is written to the results table as soon as it is created: if the kernel
dies while the job runs, calling the same map again picks the job's results up instead
of paying for the rows twice (rows still missing afterwards go into a new job). The job
is polled every `POLL_FIRST` seconds, growing to `POLL_MOST`. Cancel cancels the job at
the service; its rows are `cancelled`, except, where the provider keeps them (OpenAI,
Anthropic), the rows it finished: their results are collected if the job ends within
`CANCEL_SETTLE` seconds, else the job stays recorded and the next call collects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from ..config import provider_of, split_model
from ..conversation import CallStatus, LedgerEntry, Usage, utcnow
from ..errors import AgentError, BackendError, InvalidConfig, QuotaExceeded, TurnError
from .batchapi import BatchApi, JobStatus, Outcome
from .outcomes import CANCELLED, ERROR, SKIPPED, error_kind
from .records import StoredRow
from .run import YIELD_EVERY
from .schema import SchemaMismatch

if TYPE_CHECKING:
    from .run import BatchRun

log = logging.getLogger("agentrt_jupyter")

INLINE_LIMIT_BYTES = 4 * 1024 * 1024
"""Gemini jobs with more request bytes than this go as a JSONL file (Gemini takes 20 MB
inline)."""
POLL_FIRST = 0.25
POLL_MOST = 30.0
POLL_RETRIES = 5
"""Failed polls in a row (5xx, dropped connections) before the job is given up on."""
CANCEL_SETTLE = 5.0
"""After a cancel, how long to wait for a job that keeps its finished rows to end."""


async def answer_in_batch(run: BatchRun) -> None:
    """Answer `run`'s missing rows through its provider's Batch API (on the runtime loop)."""
    run.state = "submitting"
    missing, prompts = await _missing_rows(run)
    if not missing:
        return
    api = await _batch_api(run)
    if api is None:
        return
    try:
        await _collect_earlier_jobs(run, api, missing)
        if not missing or run.cancel_requested:
            _cancel_rows(run, missing)
            return
        await _submit_and_follow(run, api, missing, prompts)
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


async def _batch_api(run: BatchRun) -> BatchApi | None:
    """The Batch API of the run's provider, on the runtime's backend for its endpoint
    (None: the model backend is not available, and the rows were skipped)."""
    try:
        backend = await run.runtime.aio.backend(run.plan.config)
        return batch_api_for(provider_of(run.plan.model), backend)
    except AgentError as exc:
        reason = f"stopped: the model backend is not available: {exc}"
        run.stop(reason)
        run.skip_pending(reason)
        return None


def batch_api_for(provider: str, backend: object) -> BatchApi:
    """The `BatchApi` of `provider` on its backend's SDK client."""
    if provider == "openai":
        from .remote_openai import OpenAIBatchApi

        return OpenAIBatchApi(backend)
    if provider == "anthropic":
        from .remote_anthropic import AnthropicBatchApi

        return AnthropicBatchApi(backend)
    from ..backends.gemini import GeminiBackend

    if provider != "gemini" or not isinstance(backend, GeminiBackend):
        raise InvalidConfig(f"the {provider} provider has no Batch API here", field="mode")
    from .remote_gemini import GeminiBatchApi

    return GeminiBatchApi(backend.client, INLINE_LIMIT_BYTES)


async def _collect_earlier_jobs(
    run: BatchRun, api: BatchApi, missing: dict[str, list[int]]
) -> None:
    """The results of jobs an earlier call submitted and never collected (a kernel died)."""
    earlier = [] if run.plan.refresh else run.records.open_jobs()
    for job in earlier:
        try:
            if await _follow(run, api, job, missing, time.monotonic(), {}):
                return
        except TurnError as exc:  # gone (deleted, expired) or unreachable: send the rows anew
            log.warning("the earlier batch job %s cannot be collected: %s", job, exc)
            run.records.close_job(job, "lost")


async def _submit_and_follow(
    run: BatchRun, api: BatchApi, missing: dict[str, list[int]], prompts: dict[str, str]
) -> None:
    """Submit the rows within the budget as one job, and follow it to its results."""
    chosen = _within_budget(run, missing, prompts)
    if not chosen:
        return
    label = f"agentrt map {run.plan.run_key[:12]}"
    try:
        status = await api.submit(run.plan, {key: prompts[key] for key in chosen}, label)
    except (TurnError, InvalidConfig) as exc:
        _fail_rows(run, missing, chosen, str(exc), error_kind(exc))
        return
    run.records.add_job(status.id)
    _show(run, status)
    try:
        await _follow(run, api, status.id, missing, time.monotonic(), dict.fromkeys(chosen))
    except TurnError as exc:  # the job stays recorded: the same call later collects it
        why = f"the batch job {status.id} could not be followed ({exc}): run the same call again"
        _fail_rows(run, missing, chosen, why, error_kind(exc))


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


async def _follow(
    run: BatchRun,
    api: BatchApi,
    job: str,
    missing: dict[str, list[int]],
    submitted: float,
    keys: dict[str, None],
) -> bool:
    """Poll `job` to its end and give its rows their results; True if cancelled."""
    run.job = job
    status = await _poll(run, api, job)
    if status is None:  # cancelled by us
        await _cancel_job(run, api, job, missing, submitted)
        _cancel_rows(run, {k: missing.pop(k) for k in list(keys) if k in missing})
        return True
    _show(run, status)
    if status.phase == "succeeded" or api.keeps_partial:
        await _collect(run, api, status, missing, time.monotonic() - submitted)
    if status.phase != "succeeded":
        _job_failed(run, status, missing, keys)
    for key in [k for k in keys if k in missing]:
        for position in missing.pop(key):
            run.finish(position, ERROR, error=f"no result for this row in {job}")
    run.records.close_job(job, "collected" if status.phase == "succeeded" else status.phase)
    return False


async def _cancel_job(
    run: BatchRun, api: BatchApi, job: str, missing: dict[str, list[int]], submitted: float
) -> None:
    """Cancel `job` at the service; where the provider keeps the rows it finished, collect
    them if it ends within `CANCEL_SETTLE` s (else it stays recorded for the next call)."""
    with contextlib.suppress(AgentError):
        await api.cancel(job)
    if not api.keeps_partial:
        run.records.close_job(job, "cancelled")
        return
    deadline = time.monotonic() + CANCEL_SETTLE
    delay = POLL_FIRST
    try:
        while time.monotonic() < deadline:
            status = await api.poll(job)
            _show(run, status)
            if status.final:
                await _collect(run, api, status, missing, time.monotonic() - submitted)
                run.records.close_job(job, "cancelled")
                return
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay *= 1.5
    except AgentError as exc:  # the job stays recorded: the next call collects it
        log.warning("the cancelled batch job %s could not be collected now: %s", job, exc)


def _job_failed(
    run: BatchRun, status: JobStatus, missing: dict[str, list[int]], keys: dict[str, None]
) -> None:
    """The job ended without (all) results: its rows left are errors (cancelled, if it was)."""
    message = f"the batch job {status.id} ended {status.phase}"
    if status.error is not None:
        message += f": {status.error}"
    result = CANCELLED if status.phase == "cancelled" else ERROR
    for key in [k for k in keys if k in missing]:
        for position in missing.pop(key):
            run.finish(position, result, error=message, kind="BatchJob " + status.phase)


async def _collect(
    run: BatchRun,
    api: BatchApi,
    status: JobStatus,
    missing: dict[str, list[int]],
    latency: float,
) -> None:
    """Give each result of the ended job to the rows with its key."""
    if not run.cancel_requested:
        run.state = "collecting"
    run.changed()
    answered, usage = 0, Usage()
    async for key, outcome in api.results(status):
        answered += 1
        usage = usage + outcome.usage
        if answered % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        _give(run, key, outcome, missing, latency)
    await run.runtime.aio.record_calls([_ledger_row(run, status, usage, latency)])


def _ledger_row(run: BatchRun, status: JobStatus, usage: Usage, seconds: float) -> LedgerEntry:
    """The job as one row of the runtime's ledger: its provider, model and usage in all."""
    provider, model = split_model(run.plan.model)
    ended: dict[str, CallStatus] = {"succeeded": "ok", "cancelled": "cancelled"}
    return LedgerEntry(
        agent=f"map {run.plan.run_key[:12]}",
        turn=1,
        call=1,
        model=model,
        provider=provider,
        started=utcnow() - timedelta(seconds=seconds),
        usage=usage,
        time_to_first_chunk=None,
        duration=seconds,
        finish_reason=None,
        status=ended.get(status.phase, "error"),
        error=None if status.phase == "succeeded" else f"the job ended {status.phase}",
    )


def _give(
    run: BatchRun,
    key: str | None,
    outcome: Outcome,
    missing: dict[str, list[int]],
    latency: float,
) -> None:
    """One result of the job, to every row with its key (kept even if no row has it now)."""
    tokens_in, tokens_out = outcome.usage.split()
    tokens = (tokens_in or 0, tokens_out or 0)  # a batch result's usage is always reported
    run.controller.spend(*tokens)
    positions = missing.pop(key, []) if key is not None else []
    values = None
    problem = outcome.problem
    if problem is None and run.plan.schema is not None:
        try:
            values = run.plan.schema.parse(outcome.text)
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
    text = outcome.text
    if key is not None and not positions:
        run.keep(key, StoredRow(text, *tokens, latency, 1, run.plan.model))
    for number, position in enumerate(positions):
        run.finish_ok(position, text, values, tokens, latency, 1, key=key if number == 0 else None)


async def _poll(run: BatchRun, api: BatchApi, job: str) -> JobStatus | None:
    """The job once it has ended, or None if the run was cancelled first."""
    delay, failures = POLL_FIRST, 0
    while True:
        try:
            status = await api.poll(job)
        except (BackendError, QuotaExceeded) as exc:
            failures += 1
            if failures >= POLL_RETRIES or _refused(exc):
                raise
            if isinstance(exc, QuotaExceeded) and exc.retry_after:
                delay = max(delay, min(POLL_MOST, exc.retry_after))
        else:
            failures = 0
            _show(run, status)
            if status.final:
                return status
        if await run.until_cancelled(asyncio.sleep(delay)):
            return None
        delay = min(POLL_MOST, delay * 1.5)


def _refused(error: BackendError | QuotaExceeded) -> bool:
    """A poll that asking again will not fix: a 4xx other than a rate limit (a per-day or
    billing 429 included)."""
    if isinstance(error, QuotaExceeded):
        return error.scope not in ("minute", "unknown")
    return error.code is not None and error.code < 500


def _show(run: BatchRun, status: JobStatus) -> None:
    """The job's state in the run's progress."""
    run.job = status.id
    run.job_state = status.state
    if not run.cancel_requested:  # a cancelled run stays "cancelling" until it ends
        if status.phase == "pending":
            run.state = "pending"
        elif not status.final:
            run.state = "running"
    run.changed()


def _cancel_rows(run: BatchRun, rows: dict[str, list[int]]) -> None:
    for positions in rows.values():
        for position in positions:
            run.finish(position, CANCELLED, error="cancelled")
    rows.clear()
