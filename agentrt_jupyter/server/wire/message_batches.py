"""Anthropic's Message Batches API, served from memory like the Gemini Batch API.

What `client.messages.batches` calls: `POST /v1/messages/batches` (`{"requests":
[{"custom_id", "params"}]}`, each `params` a Messages request body), `GET
/v1/messages/batches[/{id}]`, `POST /v1/messages/batches/{id}/cancel`, `GET
/v1/messages/batches/{id}/results` (JSONL, one `{"custom_id", "result"}` per request, in
request order) and `DELETE /v1/messages/batches/{id}`.

A batch runs its requests through the engine in the background as soon as it is created
and shows `in_progress` until its delay (the Gemini Batch API's, `POST /_agentrt/batches`)
has passed and every request is done, then `ended`. A request whose prompt asks for an
HTTP error fault gets that error as an `errored` result; a cancelled batch's unanswered
requests are `canceled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..engines.base import EngineError
from .anthropic import error_json

AnswerOne = Callable[[Any], Awaitable[dict[str, Any]]]
"""(Messages request body) -> the message JSON; raises EngineError for an errored result."""
MAX_BATCHES = 1000


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class MessageBatch:
    id: str
    created: float
    delay: float
    requests: list[tuple[str, Any]]
    results: list[dict[str, Any]] = field(default_factory=list)
    processed: bool = False
    finished: float = 0.0
    cancelled_at: float | None = None
    task: asyncio.Task[None] | None = None

    def ended(self, now: float) -> bool:
        if self.cancelled_at is not None:
            return self.processed
        return self.processed and now >= self.created + self.delay


class MessageBatchService:
    """Batches in memory; every method answers JSON (or JSONL bytes) or raises EngineError."""

    def __init__(self, answer: AnswerOne, delay: Callable[[], float]) -> None:
        self._answer = answer
        self._delay = delay
        self._batches: dict[str, MessageBatch] = {}

    def create(self, body: Any, base_url: str) -> dict[str, Any]:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise EngineError(400, "requests: Field required (a non-empty list)")
        pairs: list[tuple[str, Any]] = []
        for item in requests:
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                raise EngineError(400, "requests: each request needs a custom_id and params")
            pairs.append((item["custom_id"], item.get("params")))
        if len({custom_id for custom_id, _ in pairs}) != len(pairs):
            raise EngineError(400, "requests: custom_id values must be unique")
        batch = MessageBatch(f"msgbatch_{secrets.token_hex(12)}", time.time(), self._delay(), pairs)
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        self._batches[batch.id] = batch
        while len(self._batches) > MAX_BATCHES:
            self._batches.pop(next(iter(self._batches)))
        return self._json(batch, base_url)

    async def _run(self, batch: MessageBatch) -> None:
        try:
            for custom_id, params in batch.requests:
                if batch.cancelled_at is not None:
                    batch.results.append({"custom_id": custom_id, "result": {"type": "canceled"}})
                    continue
                try:
                    message = await self._answer(params)
                    result: dict[str, Any] = {"type": "succeeded", "message": message}
                except EngineError as exc:
                    error = json.loads(error_json(exc.code, exc.message))
                    result = {"type": "errored", "error": error}
                batch.results.append({"custom_id": custom_id, "result": result})
                await asyncio.sleep(0)
        finally:
            batch.processed = True
            batch.finished = time.time()

    def get(self, batch_id: str, base_url: str) -> dict[str, Any]:
        return self._json(self._batch(batch_id), base_url)

    def list(self, base_url: str) -> dict[str, Any]:
        data = [self._json(b, base_url) for b in reversed(self._batches.values())]
        first = data[0]["id"] if data else None
        last = data[-1]["id"] if data else None
        return {"data": data, "has_more": False, "first_id": first, "last_id": last}

    def cancel(self, batch_id: str, base_url: str) -> dict[str, Any]:
        batch = self._batch(batch_id)
        if not batch.ended(time.time()) and batch.cancelled_at is None:
            batch.cancelled_at = time.time()
        return self._json(batch, base_url)

    def delete(self, batch_id: str) -> dict[str, Any]:
        batch = self._batch(batch_id)
        if not batch.ended(time.time()):
            raise EngineError(400, f"Batch {batch_id} cannot be deleted while it is in progress.")
        del self._batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> bytes:
        batch = self._batch(batch_id)
        if not batch.ended(time.time()):
            raise EngineError(400, f"Batch {batch_id} has not ended yet.")
        return b"".join(json.dumps(r).encode() + b"\n" for r in batch.results)

    def _batch(self, batch_id: str) -> MessageBatch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise EngineError(404, f"Batch {batch_id} not found.")
        return batch

    def _json(self, batch: MessageBatch, base_url: str) -> dict[str, Any]:
        now = time.time()
        ended = batch.ended(now)
        kinds = [r["result"]["type"] for r in batch.results] if ended else []
        status = "ended" if ended else "canceling" if batch.cancelled_at else "in_progress"
        counts = {
            "processing": 0 if ended else len(batch.requests),
            "succeeded": kinds.count("succeeded"),
            "errored": kinds.count("errored"),
            "canceled": kinds.count("canceled"),
            "expired": 0,
        }
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _timestamp(batch.created),
            "expires_at": _timestamp(batch.created + 86400),
            "ended_at": _timestamp(self._ended_at(batch)) if ended else None,
            "cancel_initiated_at": _timestamp(batch.cancelled_at),
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    @staticmethod
    def _ended_at(batch: MessageBatch) -> float:
        if batch.cancelled_at is not None:
            return batch.finished
        return max(batch.finished, batch.created + batch.delay)

    async def aclose(self) -> None:
        tasks = [b.task for b in self._batches.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
