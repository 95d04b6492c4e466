"""Gemini's REST wire format: request bodies normalised for the engines, and chunks
written back as `GenerateContentResponse` JSON (streamed or merged)."""

from __future__ import annotations

import json
from typing import Any

from ..engines.base import EngineChunk, EngineError, GenerateRequest

_OPAQUE_KEYS = frozenset(
    {
        "args",
        "response",
        "parameters",
        "parametersJsonSchema",
        "responseJsonSchema",
        "responseSchema",
        "labels",
    }
)
KNOWN_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro")


def camelize(value: Any) -> Any:
    """Turn the SDK's snake_case keys (`include_thoughts`, `mime_type`...) into camelCase.

    Values that carry user data (function args and responses, JSON schemas) are left
    alone so their own keys survive untouched.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            camel = _camel_key(key) if isinstance(key, str) else key
            out[camel] = item if camel in _OPAQUE_KEYS else camelize(item)
        return out
    if isinstance(value, list):
        return [camelize(item) for item in value]
    return value


def _camel_key(key: str) -> str:
    if "_" not in key:
        return key
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def to_generate_request(model: str, body: Any, *, stream: bool) -> GenerateRequest:
    """Validate and normalise a generateContent/countTokens body; EngineError if malformed."""
    if not isinstance(body, dict):
        raise EngineError(400, "Invalid JSON payload: expected an object.")
    body = camelize(body)
    contents = body.get("contents", [])
    if not isinstance(contents, list) or not all(
        isinstance(c, dict) and isinstance(c.get("parts", []), list) for c in contents
    ):
        raise EngineError(400, "Invalid JSON payload: contents must be a list of Content.")
    instruction = body.get("systemInstruction")
    system: str | None = None
    if isinstance(instruction, str):
        system = instruction
    elif isinstance(instruction, dict):
        texts = [p.get("text") for p in instruction.get("parts") or []]
        system = "\n".join(t for t in texts if isinstance(t, str))
    config = body.get("generationConfig") or {}
    tools = body.get("tools") or []
    if not isinstance(config, dict) or not isinstance(tools, list):
        raise EngineError(400, "Invalid JSON payload: bad generationConfig or tools.")
    return GenerateRequest(model, contents, system, config, tools, stream)


def _usage_json(usage: dict[str, int]) -> str:
    counts = {k: v for k, v in usage.items() if v or k != "thoughtsTokenCount"}
    if "totalTokenCount" not in counts:
        counts["totalTokenCount"] = sum(counts.values())
    return json.dumps(counts, separators=(",", ":"))


class ChunkEncoder:
    """Serialises chunks for one call; reuses the JSON of a repeated parts list."""

    def __init__(self, model: str, response_id: str) -> None:
        self._head = '{"candidates":[{"content":{"parts":'
        self._tail = f',"modelVersion":{json.dumps(model)},"responseId":{json.dumps(response_id)}}}'
        self._parts: list[dict[str, Any]] | None = None
        self._parts_json = ""

    def encode(self, chunk: EngineChunk) -> str:
        if chunk.parts is not self._parts:
            self._parts = chunk.parts
            self._parts_json = json.dumps(chunk.parts, separators=(",", ":"))
        finish = f',"finishReason":"{chunk.finish_reason}"' if chunk.finish_reason else ""
        if chunk.logprob is not None:
            finish += f',"avgLogprobs":{chunk.logprob!r}'
        return (
            f'{self._head}{self._parts_json},"role":"model"}}{finish},"index":0}}],'
            f'"usageMetadata":{_usage_json(chunk.usage)}{self._tail}'
        )


def merge_chunks(chunks: list[EngineChunk], model: str, response_id: str) -> dict[str, Any]:
    """The non-streaming response: adjacent text parts of the same kind joined."""
    parts: list[dict[str, Any]] = []
    for chunk in chunks:
        for part in chunk.parts:
            prev = parts[-1] if parts else None
            if (
                prev is not None
                and set(prev) <= {"text", "thought"}
                and set(part) <= {"text", "thought"}
                and "text" in prev
                and "text" in part
                and prev.get("thought") == part.get("thought")
            ):
                parts[-1] = {**prev, "text": prev["text"] + part["text"]}
            else:
                parts.append(dict(part))
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if chunks and chunks[-1].finish_reason:
        candidate["finishReason"] = chunks[-1].finish_reason
    logprobs = [chunk.logprob for chunk in chunks if chunk.logprob is not None]
    if logprobs:
        candidate["avgLogprobs"] = sum(logprobs) / len(logprobs)
    candidate["index"] = 0
    response: dict[str, Any] = {"candidates": [candidate]}
    if chunks:
        response["usageMetadata"] = json.loads(_usage_json(chunks[-1].usage))
    response["modelVersion"] = model
    response["responseId"] = response_id
    return response
