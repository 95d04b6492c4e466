"""The embedding routes' wire formats: Gemini's `:embedContent` and `:batchEmbedContents`,
OpenAI's `/v1/embeddings`.

Each turns a request body into the texts to embed (and the dimensions asked for), and the
engine's vectors into the reply body. OpenAI's SDK asks for base64 (little-endian float32)
unless told `encoding_format="float"`; both are answered.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from ..engines.base import EngineError


@dataclass(frozen=True)
class EmbedRequest:
    """Texts to embed, in order, and the vector length asked for (None: the engine's)."""

    texts: list[str]
    dimensions: int | None = None
    base64: bool = False


def gemini_single(body: Any) -> EmbedRequest:
    """`models/{model}:embedContent`: one `content` of text parts."""
    if not isinstance(body, dict):
        raise EngineError(400, "Invalid JSON payload received.")
    return EmbedRequest([_content_text(body.get("content"))], _dimensions(body))


def gemini_batch(body: Any) -> EmbedRequest:
    """`models/{model}:batchEmbedContents`: `requests`, each an embedContent body."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise EngineError(400, "* BatchEmbedContentsRequest.requests: must not be empty")
    texts = [_content_text(r.get("content") if isinstance(r, dict) else None) for r in requests]
    sizes = {_dimensions(r) for r in requests if isinstance(r, dict)}
    return EmbedRequest(texts, sizes.pop() if len(sizes) == 1 else None)


def gemini_reply(vectors: list[list[float]], *, single: bool) -> dict[str, Any]:
    if single:
        return {"embedding": {"values": vectors[0]}}
    return {"embeddings": [{"values": vector} for vector in vectors]}


def openai_request(body: Any) -> tuple[str, EmbedRequest]:
    """`POST /v1/embeddings`: the model and `input` (a string or a list of strings)."""
    if not isinstance(body, dict):
        raise EngineError(400, "We could not parse the JSON body of your request.")
    model, given = body.get("model"), body.get("input")
    if not isinstance(model, str) or not model:
        raise EngineError(400, "you must provide a model parameter")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise EngineError(400, "'input' must be a non-empty string or list of strings")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
        raise EngineError(400, "'dimensions' must be a positive integer")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise EngineError(400, "'encoding_format' must be 'float' or 'base64'")
    return model, EmbedRequest(texts, dimensions, encoding == "base64")


def openai_reply(
    model: str, vectors: list[list[float]], tokens: int, *, as_base64: bool
) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, as_base64)}
        for index, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _encoded(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _content_text(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise EngineError(400, "* EmbedContentRequest.content: contents must have parts")
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    if len(texts) != len(parts):
        raise EngineError(400, "this server embeds text parts only")
    return "".join(texts)


def _dimensions(body: dict[str, Any]) -> int | None:
    nested = body.get("embedContentConfig")
    config = nested if isinstance(nested, dict) else body
    size = config.get("outputDimensionality", body.get("outputDimensionality"))
    if size is None:
        return None
    if not isinstance(size, int) or size < 1:
        raise EngineError(400, "outputDimensionality must be a positive integer")
    return size
