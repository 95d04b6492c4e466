"""Anthropic Messages: `POST /v1/messages` and `GET /v1/models`.

The key comes as `x-api-key`, or as `Authorization: Bearer` (anthropic 2.x sends its
`api_key` that way). `max_tokens` is required. Streams are named SSE events:
`message_start` (input usage), then per content block `content_block_start`,
`content_block_delta`s (`text_delta`, `thinking_delta` + `signature_delta`,
`input_json_delta`) and `content_block_stop`, then `message_delta` (stop reason and
output usage, thinking tokens in `output_tokens_details`) and `message_stop`. Thoughts
come back when the request enables `thinking`, each thinking block with a signature the
client must send back unchanged. `output_config.format` (a JSON schema) reaches the engine
as Gemini's `responseJsonSchema`.

Faults: a `429` is a `rate_limit_error` with `retry-after` (and the
`anthropic-ratelimit-requests-*` headers); `429 day` and `429 zero` are what a quota
used up looks like here, the 400 `invalid_request_error` of a credit balance too low;
`402` is `billing_error`; `529` is `overloaded_error`; a mid-stream error is an
`event: error`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from ..engines.base import EngineChunk, EngineError, GenerateRequest
from ..faults import Fault, Reply
from .base import (
    bearer_or_key_ok,
    dumps,
    function_declarations,
    json_fragments,
    output_tokens,
    signature,
    text_of,
    tool_names,
)

MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_MESSAGES = {
    401: "invalid x-api-key",
    429: "This request would exceed the rate limit for your organization. Please try again later.",
    500: "Internal server error",
    529: "Overloaded",
}
CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
    "Billing to upgrade or purchase credits."
)
_STOP_REASONS = {"MAX_TOKENS": "max_tokens", "SAFETY": "refusal"}


def error_json(code: int, message: str | None = None) -> bytes:
    """Anthropic's error body for HTTP `code`."""
    error = {
        "type": _ERROR_TYPES.get(code, "api_error"),
        "message": message or _MESSAGES.get(code, f"Injected fault: HTTP {code}."),
    }
    return dumps({"type": "error", "error": error}).encode()


def _source_part(source: Any) -> dict[str, Any]:
    if not isinstance(source, dict):
        raise EngineError(400, "messages: an image or document block needs a source.")
    if source.get("type") == "base64":
        mime = str(source.get("media_type", "application/octet-stream"))
        return {"inlineData": {"mimeType": mime, "data": str(source.get("data", ""))}}
    if source.get("type") == "text":
        return {"text": str(source.get("data", ""))}
    return {
        "fileData": {"fileUri": str(source.get("url", "")), "mimeType": "application/octet-stream"}
    }


def _tool_result(block: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    call_id = str(block.get("tool_use_id", ""))
    text = text_of(block.get("content"))
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if block.get("is_error"):
        response: dict[str, Any] = {"error": value}
    else:
        response = value if isinstance(value, dict) else {"result": value}
    return {
        "functionResponse": {"id": call_id, "name": names.get(call_id, ""), "response": response}
    }


def _block_part(block: Any, names: dict[str, str]) -> dict[str, Any] | None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return {"text": str(block.get("text", ""))}
    if kind in ("image", "document"):
        return _source_part(block.get("source"))
    if kind == "tool_use":
        call = {"id": block.get("id"), "name": block.get("name"), "args": block.get("input") or {}}
        return {"functionCall": call}
    if kind == "tool_result":
        return _tool_result(block, names)
    if kind == "thinking":
        thought = str(block.get("thinking", ""))
        return {"text": thought, "thought": True, "thoughtSignature": block.get("signature")}
    if kind == "redacted_thinking":
        return None
    raise EngineError(400, f"messages: unsupported content block type {kind!r}.")


def _contents(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    for message in messages:
        role = "model" if message["role"] == "assistant" else "user"
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise EngineError(400, "messages: content must be a string or a list of blocks.")
        names = tool_names(contents)
        parts = [p for p in (_block_part(b, names) for b in blocks) if p is not None]
        contents.append({"role": role, "parts": parts})
    return contents


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {"maxOutputTokens": body["max_tokens"]}
    if body.get("stop_sequences"):
        config["stopSequences"] = body["stop_sequences"]
    for key, name in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK")):
        if body.get(key) is not None:
            config[name] = body[key]
    output = body.get("output_config") or {}
    output_format = output.get("format") if isinstance(output, dict) else None
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = output_format.get("schema")
    thinking = body.get("thinking") or {}
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        config["thinkingConfig"] = {"includeThoughts": True}
        if isinstance(thinking.get("budget_tokens"), int):
            config["thinkingConfig"]["thinkingBudget"] = thinking["budget_tokens"]
    return config


def _declarations(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise EngineError(400, "tools: Input should be a valid list")
    declared = []
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise EngineError(400, "tools: each tool needs a name.")
        if "input_schema" in tool:
            declared.append(
                {
                    "name": tool["name"],
                    "description": tool.get("description", ""),
                    "parameters": tool["input_schema"],
                }
            )
    return function_declarations(declared)


def _stop_reason(reason: str | None, called: bool) -> str | None:
    if reason is None:
        return None
    if reason in _STOP_REASONS:
        return _STOP_REASONS[reason]
    return "tool_use" if called else "end_turn"


def _output_usage(usage: dict[str, int]) -> dict[str, Any]:
    """Output tokens, and the thinking tokens among them when there are any."""
    counts: dict[str, Any] = {"output_tokens": output_tokens(usage)}
    if usage.get("thoughtsTokenCount"):
        counts["output_tokens_details"] = {"thinking_tokens": usage["thoughtsTokenCount"]}
    return counts


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()


class AnthropicStream:
    """The events of one streamed message; adjacent text (or thought) parts share a block."""

    def __init__(self, request: GenerateRequest, response_id: str) -> None:
        self._model = request.model
        self._id = response_id
        self._index = -1
        self._open: str | None = None
        self._thinking: list[str] = []
        self._called = False
        self._last: EngineChunk | None = None

    def open(self, input_tokens: int) -> bytes:
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def chunk(self, chunk: EngineChunk) -> bytes:
        self._last = chunk
        out: list[bytes] = []
        for part in chunk.parts:
            call = part.get("functionCall")
            if isinstance(call, dict):
                out.extend(self._tool_use(call))
            elif part.get("thought"):
                text = str(part.get("text", ""))
                out.append(self._ensure("thinking", {"type": "thinking", "thinking": ""}))
                self._thinking.append(text)
                out.append(self._delta({"type": "thinking_delta", "thinking": text}))
            elif "text" in part:
                out.append(self._ensure("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": part["text"]}))
        return b"".join(out)

    def _ensure(self, kind: str, block: dict[str, Any]) -> bytes:
        """Start a block of `kind` unless one is open."""
        if self._open == kind:
            return b""
        out = self._stop_block()
        self._index += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + _event("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return _event("content_block_delta", data)

    def _stop_block(self) -> bytes:
        if self._open is None:
            return b""
        out = b""
        if self._open == "thinking":
            sig = signature("".join(self._thinking))
            out = self._delta({"type": "signature_delta", "signature": sig})
            self._thinking = []
        self._open = None
        stop = {"type": "content_block_stop", "index": self._index}
        return out + _event("content_block_stop", stop)

    def _tool_use(self, call: dict[str, Any]) -> list[bytes]:
        self._called = True
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": call.get("id"),
            "name": call.get("name"),
            "input": {},
        }
        out = [self._ensure("tool_use", block)]
        for fragment in json_fragments(call.get("args") or {}):
            out.append(self._delta({"type": "input_json_delta", "partial_json": fragment}))
        out.append(self._stop_block())
        return out

    def close(self) -> bytes:
        last = self._last
        reason = _stop_reason(last.finish_reason, self._called) if last else None
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": _output_usage(last.usage if last else {}),
        }
        return (
            self._stop_block()
            + _event("message_delta", delta)
            + _event("message_stop", {"type": "message_stop"})
        )

    def error(self, code: int, message: str | None = None) -> bytes:
        return b"event: error\ndata: " + error_json(code, message) + b"\n\n"

    def garbage(self, payload: bytes) -> bytes:
        return b"event: content_block_delta\ndata: " + payload + b"\n\n"


def _merged_blocks(chunks: list[EngineChunk]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for chunk in chunks:
        for part in chunk.parts:
            call = part.get("functionCall")
            last = blocks[-1] if blocks else {}
            if isinstance(call, dict):
                input_ = call.get("args") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": call.get("name"),
                        "input": input_,
                    }
                )
            elif part.get("thought"):
                if last.get("type") == "thinking":
                    last["thinking"] += str(part.get("text", ""))
                else:
                    blocks.append({"type": "thinking", "thinking": str(part.get("text", ""))})
            elif "text" in part:
                if last.get("type") == "text":
                    last["text"] += part["text"]
                else:
                    blocks.append({"type": "text", "text": part["text"]})
    for block in blocks:
        if block["type"] == "thinking":
            block["signature"] = signature(block["thinking"])
    return blocks


class AnthropicWire:
    """The Messages wire format (`wire/base.py`'s `Wire`)."""

    request_id_header = "request-id"

    def key_ok(self, request: web.Request, token: str) -> bool:
        return bearer_or_key_ok(request, token, "x-api-key")

    def to_request(self, body: Any) -> tuple[GenerateRequest, dict[str, Any]]:
        if not isinstance(body, dict):
            raise EngineError(400, "messages: the request body must be a JSON object.")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise EngineError(400, "model: Field required")
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise EngineError(400, "max_tokens: Field required")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in messages
        ):
            raise EngineError(400, "messages: Input should be a list of user/assistant messages")
        system = body.get("system")
        system_text = text_of(system) if system is not None else None
        tools = _declarations(body.get("tools") or [])
        stream = bool(body.get("stream"))
        greq = GenerateRequest(
            model, _contents(messages), system_text, _config(body), tools, stream
        )
        return greq, {}

    def error_reply(self, code: int, message: str | None = None) -> Reply:
        return Reply(code, error_json(code, message))

    def fault_reply(self, fault: Fault, model: str) -> Reply:
        if fault.code != 429:
            return self.error_reply(fault.code)
        if fault.quota in ("day", "zero"):
            return self.error_reply(400, CREDIT_MESSAGE)
        reset = datetime.now(UTC) + timedelta(seconds=fault.delay)
        headers = (
            ("retry-after", f"{fault.delay:g}"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", reset.isoformat(timespec="seconds")),
        )
        return Reply(429, error_json(429), headers=headers)

    def stream(
        self, request: GenerateRequest, response_id: str, options: dict[str, Any]
    ) -> AnthropicStream:
        return AnthropicStream(request, response_id)

    def merge(
        self, chunks: list[EngineChunk], request: GenerateRequest, response_id: str
    ) -> dict[str, Any]:
        blocks = _merged_blocks(chunks)
        last = chunks[-1] if chunks else None
        called = any(b["type"] == "tool_use" for b in blocks)
        usage = last.usage if last else {}
        return {
            "id": response_id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": blocks,
            "stop_reason": _stop_reason(last.finish_reason, called) if last else None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage.get("promptTokenCount", 0),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                **_output_usage(usage),
            },
        }

    def models(self) -> dict[str, Any]:
        data = [self.model(m) for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}

    def model(self, model: str) -> dict[str, Any]:
        created = datetime.fromtimestamp(0, UTC).isoformat().replace("+00:00", "Z")
        return {"type": "model", "id": model, "display_name": model, "created_at": created}
