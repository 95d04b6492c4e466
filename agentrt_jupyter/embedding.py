"""Embeddings on the runtime loop: `runtime.embed_texts(texts, model=...)`.

One call embeds up to `TEXTS_PER_CALL` texts (Gemini's `batchEmbedContents`, OpenAI's
`/v1/embeddings`). Every vector is kept in the reply cache, keyed by who answers, the
model and the text, so embedding the same texts again makes no request; it is kept as
float32 (4 bytes a number, base64: a 768-number vector is about 4 KB of the cache's
bounds), and returned as kept, so a replayed vector equals the one first returned. Each call is one
ledger row (agent "embed"), in `runtime.ledger()` beside the agents' calls. A per-minute
429 blocks the credential for every agent on it and is retried after the wait; a 408/5xx
or a failed connection is retried with backoff; the limits are the runtime's
(`quota_max_retries`, `http_retry_attempts`, `quota_max_wait`).

The default model follows the runtime's default provider: Gemini's `gemini-embedding-001`,
OpenAI's `text-embedding-3-small`, the local model's own embeddings when the runtime runs
the embedded model. Anthropic has no embeddings API (`InvalidConfig`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, cast

from .backends.base import Attempt, EmbeddingBackend, Embeddings, QuotaHit
from .backends.retry import MAX_RETRY_PAUSE, RETRIED_STATUS_CODES
from .config import LOCAL_MODEL, AgentConfig, provider_of, split_model
from .content import TextPart
from .conversation import CallStatus, Usage, utcnow
from .errors import BackendError, InvalidConfig, QuotaExceeded
from .store import CachedReply

if TYPE_CHECKING:
    from .registry import AgentRegistry

TEXTS_PER_CALL = 100
"""Texts sent in one embedding call (Gemini's batchEmbedContents takes up to 100)."""
CALLS_AT_ONCE = 4
"""Embedding calls in flight at once for one `embed_texts`."""
DEFAULT_MODELS = {
    "gemini": "gemini-embedding-001",
    "vertex": "vertex:gemini-embedding-001",
    "openai": "openai:text-embedding-3-small",
}
LEDGER_AGENT = "embed"
_call_numbers = itertools.count(1)


@dataclass(frozen=True)
class EmbeddedTexts:
    """Vectors for the texts asked, in order; the calls made now, the texts found in the
    cache, and the tokens the service counted for the calls made now."""

    vectors: list[list[float]] = field(repr=False)
    model: str
    calls: int
    cached: int
    tokens: int


def embedding_model(registry: AgentRegistry, model: str | None) -> str:
    """The model that embeds: `model`, else the default of the runtime's provider."""
    if model is not None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidConfig("must be a model name or None", field="model")
        chosen = model
    else:
        default = registry.config.model_for(None)
        provider = provider_of(default)
        chosen = LOCAL_MODEL if default == LOCAL_MODEL else DEFAULT_MODELS.get(provider, "")
        if not chosen:
            raise InvalidConfig(
                f"no default embedding model for the {provider} provider: pass model=...",
                field="model",
            )
    if provider_of(chosen) == "anthropic":
        raise InvalidConfig(
            "Anthropic has no embeddings API: pass model='gemini-embedding-001' or an "
            "'openai:' embedding model",
            field="model",
        )
    return chosen


async def embed_texts(
    registry: AgentRegistry, texts: Sequence[str], model: str | None = None, refresh: bool = False
) -> EmbeddedTexts:
    """Vectors for `texts` (on the runtime loop); see the module docstring. `refresh` asks
    the model again for every text (and keeps the new vectors)."""
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise InvalidConfig("must be a list of strings", field="texts")
    if not isinstance(refresh, bool):
        raise InvalidConfig("must be True or False", field="refresh")
    chosen = embedding_model(registry, model)
    config = AgentConfig(model=chosen)
    label = registry.endpoint_label(config)
    keys = {text: _key(label, chosen, text) for text in texts}
    found: dict[str, list[float]] = {}
    for text, key in keys.items():
        vector = None if refresh else _kept(registry, key)
        if vector is not None:
            found[text] = vector
    missing = [text for text in keys if text not in found]
    cached_count = len(keys) - len(missing)
    batches = [missing[i : i + TEXTS_PER_CALL] for i in range(0, len(missing), TEXTS_PER_CALL)]
    tokens = [0]
    if batches:
        backend = await registry.backend_for(config)
        if not callable(getattr(backend, "embed", None)):
            raise InvalidConfig(f"the {provider_of(chosen)} backend cannot embed", field="model")
        caller = _Caller(registry, cast(EmbeddingBackend, backend), chosen)
        gate = asyncio.Semaphore(CALLS_AT_ONCE)

        async def one(batch: list[str]) -> None:
            """One call; its vectors are kept at once (a cancel or a failed call elsewhere
            loses none of them)."""
            async with gate:
                result = await caller.call(batch)
            tokens[0] += result.tokens or 0
            for text, vector in zip(batch, result.vectors, strict=True):
                packed = _packed(vector)
                found[text] = _unpacked(packed)
                kept = CachedReply((TextPart(packed),), Usage(), None, chosen)
                registry.recorder.cache(keys[text], kept, None)

        calls = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            await asyncio.gather(*calls)
        finally:
            for call in calls:  # the others stop when one fails
                call.cancel()
    vectors = [found[text] for text in texts]
    return EmbeddedTexts(vectors, chosen, len(batches), cached_count, tokens[0])


def _kept(registry: AgentRegistry, key: str) -> list[float] | None:
    """The vector kept under `key`, if any (anything else there is not one)."""
    cached = registry.recorder.cached(key)
    if cached is None or not cached.parts or not isinstance(cached.parts[0], TextPart):
        return None
    try:
        return _unpacked(cached.parts[0].text)
    except (ValueError, struct.error):
        return None


def _packed(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _unpacked(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _key(label: str, model: str, text: str) -> str:
    material = json.dumps(["embed", label, model, text], separators=(",", ":"))
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


class _Caller:
    """One embedding call with the runtime's retries and quota waits, a ledger row each."""

    def __init__(self, registry: AgentRegistry, backend: EmbeddingBackend, model: str) -> None:
        self._registry = registry
        self._backend = backend
        self._model = model
        self._name = split_model(model)[1]

    async def call(self, texts: list[str]) -> Embeddings:
        config, quota = self._registry.config, self._registry.quota
        credential = self._backend.credential
        failures = quota_waits = 0
        while True:
            waited = await quota.wait(credential)
            started, wall = time.monotonic(), utcnow()
            try:
                result = await self._backend.embed(texts, self._name)
            except QuotaHit as hit:
                self._row(wall, started, "rate-limited", Usage(), waited, str(hit))
                quota_waits += 1
                info = hit.info
                wait = (
                    quota.record_hit(
                        credential, info.retry_after, scope="minute", retry=quota_waits > 1
                    )
                    if info.scope == "minute"
                    else 0.0
                )
                if (
                    info.scope != "minute"
                    or quota_waits > config.quota_max_retries
                    or wait > config.quota_max_wait
                ):
                    raise QuotaExceeded(
                        info.message,
                        retry_after=info.retry_after,
                        quota_id=info.quota_id,
                        scope=info.scope,
                    ) from None
                continue
            except BackendError as exc:
                failures += 1
                retried = exc.code in RETRIED_STATUS_CODES or exc.status == "UNAVAILABLE"
                last = not retried or failures >= config.http_retry_attempts
                self._row(wall, started, "error" if last else "retried", Usage(), waited, str(exc))
                if last:
                    raise
                await asyncio.sleep(
                    min(MAX_RETRY_PAUSE, 0.5 * 2**failures) * random.uniform(1, 1.2)
                )
                continue
            except asyncio.CancelledError:
                self._row(wall, started, "cancelled", Usage(), waited, None)
                raise
            quota.record_success(credential)
            count = result.tokens or 0
            self._row(wall, started, "ok", Usage(prompt_tokens=count, total_tokens=count), waited)
            return result

    def _row(
        self,
        wall: datetime,
        started: float,
        status: CallStatus,
        usage: Usage,
        waited: float,
        error: str | None = None,
    ) -> None:
        registry = self._registry
        attempt = Attempt(
            model=self._model,
            started=wall,
            usage=usage,
            time_to_first_chunk=None,
            duration=time.monotonic() - started,
            finish_reason=None,
            status=status,
            retry_wait=waited,
            error=error,
        )
        entry = attempt.entry(LEDGER_AGENT, 0, next(_call_numbers))
        registry.retired_ledger[entry] = None  # paid for, as a retired agent's calls
