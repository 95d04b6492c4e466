"""Reply-cache replay at the boundary: a recorded request streams its recorded reply.

`ReplayingCaller` wraps another caller (the retrying one). A request whose key is in
the cache is answered from it: the same parts, streamed in word-sized pieces, nothing
billed, one ledger row marked `replayed` with the tokens it saved. Any other request
goes to the wrapped caller, and a complete reply is recorded for next time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import Protocol

from ..content import TextPart, part_to_json
from ..conversation import Usage, utcnow
from ..store import CachedReply
from .base import (
    BLOCKED_FINISH_REASONS,
    Attempt,
    CallListener,
    ModelCaller,
    ModelChunk,
    ModelRequest,
    Reply,
)

_PIECES = re.compile(r"\s*\S+\s*|\s+")


class ReplyCache(Protocol):
    """Where recorded replies are kept (the store, or memory without one)."""

    def get(self, key: str) -> CachedReply | None: ...

    def put(self, key: str, reply: CachedReply) -> None: ...


def reply_key(request: ModelRequest, endpoint: str = "") -> str:
    """The reply cache's key: a hash of everything that decides the reply.

    Who answers (`endpoint`: a base URL, or the backend's name), model, generation
    settings, system instruction, tool declarations, response schema and the full
    contents sent (thoughts are not sent, so they do not count).
    """
    cfg = request.config
    schema = cfg.response_schema
    if isinstance(schema, type):
        builder = getattr(schema, "model_json_schema", None)
        schema = builder() if callable(builder) else f"{schema.__module__}.{schema.__qualname__}"
    material = {
        "endpoint": endpoint,
        "model": request.model,
        "system": request.system_instruction,
        "settings": [
            cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_output_tokens,
            list(cfg.stop_sequences), cfg.seed, cfg.thinking_budget, cfg.include_thoughts,
            cfg.response_mime_type,
        ],
        "tools": [t.declaration() for t in cfg.tool_list] if request.with_tools else [],
        "schema": schema,
        "contents": [
            [m.role, [part_to_json(p) for p in m.parts if not getattr(p, "thought", False)]]
            for m in request.messages
            if m.role != "summary"
        ],
    }  # fmt: skip
    text = json.dumps(material, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ReplayingCaller:
    """Answers recorded requests from `cache`; the rest go to `inner` and are recorded."""

    def __init__(self, inner: ModelCaller, cache: ReplyCache, endpoint: str) -> None:
        self._inner = inner
        self._cache = cache
        self._endpoint = endpoint

    async def call(
        self,
        request: ModelRequest,
        reply: Reply,
        listener: CallListener,
        *,
        refresh: bool = False,
    ) -> None:
        key = reply_key(request, self._endpoint)
        if not refresh:
            recorded = self._cache.get(key)
            if recorded is not None:
                await _replay(recorded, reply, listener)
                return
        await self._inner.call(request, reply, listener)
        if reply.finish_reason not in (None, *BLOCKED_FINISH_REASONS):
            self._cache.put(
                key, CachedReply(reply.parts(), reply.usage, reply.finish_reason, request.model)
            )


async def _replay(recorded: CachedReply, reply: Reply, listener: CallListener) -> None:
    """Stream a recorded reply as if it arrived, then its `replayed` ledger row."""
    started, wall = time.monotonic(), utcnow()
    reply.first_chunk_at = started
    for part in recorded.parts:
        if isinstance(part, TextPart) and part.text:
            for number, piece in enumerate(_PIECES.findall(part.text)):
                signature = part.thought_signature if number == 0 else None
                _show(
                    ModelChunk((TextPart(piece, part.thought, signature),), None), reply, listener
                )
        else:
            _show(ModelChunk((part,), None), reply, listener)
        await asyncio.sleep(0)
    reply.finish_reason = recorded.finish_reason
    listener.on_attempt(
        Attempt(
            model=recorded.model,
            started=wall,
            usage=Usage(),
            time_to_first_chunk=0.0,
            duration=time.monotonic() - started,
            finish_reason=recorded.finish_reason,
            status="replayed",
            saved_tokens=recorded.usage.total_tokens or 0,  # unknown if none was reported
        )
    )


def _show(chunk: ModelChunk, reply: Reply, listener: CallListener) -> None:
    reply.add(chunk)
    listener.on_chunk(chunk, reply)
