"""The request log: one record per model request, for tests to read back.

A record is a JSON object:

- `id` (int, increasing for the server's life, never reused: not even after a clear or
  once the record is evicted), `received` and `finished` (Unix times; `finished` is
  None while the request runs), `method`, `path`, `model`, `kind` (`generate`,
  `stream`, `count_tokens`, `model`, or `redirect` for a request that follows a
  `redirect` fault), `api_key_ok`, `fault` (the SPEC applied, or None). OpenAI's and
  Anthropic's requests have the same kinds; their `path` (`/v1/chat/completions`,
  `/v1/messages`) tells the wire format.
- `status`: the HTTP status answered (200 once a stream's headers are out, even if an
  SSE error event follows); 0 until known.
- `outcome`: None while running, then `complete`, `rejected` (refused before the body
  was read: bad API key 400 (401 on the OpenAI and Anthropic routes), body too large
  413, body too slow 408), `error` (an error
  answered after the body was read: bad JSON or shape 400, an engine error, an error
  fault or SSE error event), `garbage` (a fault's garbage reply with a 2xx status, or a
  garbage SSE line), `redirected`, `dropped` or `client_closed`.
- `chunks_sent`: SSE events sent with model chunks (streams only).
- `body`: the request's parsed JSON when it was accepted and is at most
  `ServerLimits.log_body_bytes` long as sent; the first `EXCERPT_BYTES` of its text
  when it was longer; None when it was refused (bad key, too large or slow, not JSON,
  not a Gemini request), had none, or was released to keep all kept bodies within
  `ServerLimits.log_total_body_bytes` (oldest first).
- `body_truncated`: True when `body` is an excerpt or was released.
- `body_bytes`: the body's size as read, or as its Content-Length declared when it was
  not read (None if neither is known).

At most `ServerLimits.log_records` records are kept; older ones are evicted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .limits import ServerLimits

Record = dict[str, Any]
EXCERPT_BYTES = 4096


class RequestLog:
    """Records of model requests, with waiters woken on every start and finish."""

    def __init__(self, limits: ServerLimits) -> None:
        self._limits = limits
        self._records: dict[int, Record] = {}
        self._next_id = 1
        self._started_since_clear = 0
        self._body_sizes: dict[int, int] = {}
        """Ids of the records that hold a body, oldest first, with the bytes each counts."""
        self._body_total = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self, request: web.Request, kind: str, model: str) -> Record:
        record: Record = {
            "id": self._next_id,
            "received": time.time(),
            "method": request.method,
            "path": request.path,
            "model": model,
            "kind": kind,
            "body": None,
            "body_truncated": False,
            "body_bytes": request.content_length,
            "api_key_ok": False,
            "fault": None,
            "status": 0,
            "chunks_sent": 0,
            "outcome": None,
            "finished": None,
        }
        self._next_id += 1
        self._started_since_clear += 1
        self._records[record["id"]] = record
        while len(self._records) > self._limits.log_records:
            self._evict(next(iter(self._records)))
        self._notify()
        return record

    def keep_body(self, record: Record, raw: bytes, body: Any) -> None:
        """Keep an accepted request's body (parsed as `body`) in its record, within bounds."""
        record["body_bytes"] = len(raw)
        if record["id"] not in self._records:
            return
        if len(raw) <= self._limits.log_body_bytes:
            record["body"], size = body, len(raw)
        else:
            excerpt = raw[:EXCERPT_BYTES]
            record["body"] = excerpt.decode("utf-8", "replace")
            record["body_truncated"] = True
            size = len(excerpt)
        self._body_sizes[record["id"]] = size
        self._body_total += size
        while self._body_total > self._limits.log_total_body_bytes:
            oldest = next(iter(self._body_sizes))
            self._release_body(oldest)
            self._records[oldest]["body_truncated"] = True
        self._notify()  # a waiter for a request by what it sent sees it now

    def _release_body(self, record_id: int) -> None:
        size = self._body_sizes.pop(record_id, None)
        if size is not None:
            self._body_total -= size
            self._records[record_id]["body"] = None

    def _evict(self, record_id: int) -> None:
        self._release_body(record_id)
        del self._records[record_id]

    def finish(self, record: Record, outcome: str, status: int | None = None) -> None:
        """Set the outcome once; a later call (e.g. the cancel after a drop) is ignored."""
        if record["outcome"] is not None:
            return
        if status is not None:
            record["status"] = status
        record["outcome"] = outcome
        record["finished"] = time.time()
        self._notify()

    def since(self, after: int) -> list[Record]:
        return [r for i, r in self._records.items() if i > after]

    def last(self) -> Record | None:
        return next(reversed(self._records.values()), None)

    def clear(self) -> None:
        """Forget the records; ids keep increasing so old ids never match new requests."""
        self._records.clear()
        self._body_sizes.clear()
        self._body_total = 0
        self._started_since_clear = 0
        self._notify()

    @property
    def started_since_clear(self) -> int:
        """Requests logged since the last clear, the evicted ones included."""
        return self._started_since_clear

    async def wait_until(self, ready: Callable[[], bool]) -> None:
        """Return once `ready()` holds, checking after every start, body and finish."""
        while not ready():
            await self._changed.wait()

    def get(self, record_id: int) -> Record | None:
        return self._records.get(record_id)

    def is_forgotten(self, record_id: int) -> bool:
        """True for an id that was logged but is no longer kept (cleared or evicted)."""
        return record_id < self._next_id and record_id not in self._records
