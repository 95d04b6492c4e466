"""OpenAI Chat Completions: `POST /v1/chat/completions` and `GET /v1/models`.

The key comes as `Authorization: Bearer TOKEN`. Streams are `data: {chunk}` lines ending
with `data: [DONE]`; text goes in `delta.content`, thoughts (when the request sets
`reasoning_effort`) in `delta.reasoning_content` as vLLM and DeepSeek send them, tool
calls in `delta.tool_calls[i]` with `function.arguments` in fragments. Usage comes only
when asked (`stream_options.include_usage`), as a last chunk with `choices: []`; thought
tokens count as `completion_tokens_details.reasoning_tokens`.

Faults: a `429 minute` is a `rate_limit_error` with `retry-after`, `retry-after-ms` and
`x-ratelimit-reset-requests`/`-tokens`; `429 day|zero` is the billing refusal
(`insufficient_quota`, no retry headers); a mid-stream error is `data: {"error": ...}`;
`no_usage` sends no usage chunk though one is asked for (llama.cpp's server does so).
"""

from __future__ import annotations

import json
import time
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
    text_of,
    tool_names,
)

MODELS = ("gpt-4.1-mini", "gpt-4.1", "gpt-4o-mini")
_CONTENT_FILTER = frozenset({"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII"})
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_MESSAGES = {
    401: "Incorrect API key provided. You can find your API key in your local server's token.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}
_BILLING_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` headers write it (`200ms`, `1s`, `6m0s`)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def error_json(code: int, message: str | None = None, *, kind: str | None = None) -> bytes:
    """OpenAI's error body; `kind` overrides the type and code (`insufficient_quota`)."""
    error_type = kind or _ERROR_TYPES.get(code, "server_error")
    error_code: str | None = kind
    if code == 401:
        error_code = "invalid_api_key"
    elif code == 429 and kind is None:
        error_code = "rate_limit_exceeded"
    text = message or _MESSAGES.get(code, f"Injected fault: HTTP {code}.")
    error = {"message": text, "type": error_type, "param": None, "code": error_code}
    return dumps({"error": error}).encode()


def _data_url_part(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        head, _, data = url.partition(";base64,")
        return {"inlineData": {"mimeType": head[5:], "data": data}}
    return {"fileData": {"fileUri": url, "mimeType": "application/octet-stream"}}


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise EngineError(400, "messages: a user message's content must be a string or a list.")
    parts: list[dict[str, Any]] = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            parts.append({"text": str(item.get("text", ""))})
        elif kind == "image_url":
            parts.append(_data_url_part(str((item.get("image_url") or {}).get("url", ""))))
        elif kind == "file":
            parts.append(_data_url_part(str((item.get("file") or {}).get("file_data", ""))))
        else:
            raise EngineError(400, f"messages: unsupported content part type {kind!r}.")
    return parts


def _assistant_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text:
        parts.append({"text": text})
    for call in message.get("tool_calls") or []:
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        try:
            args = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise EngineError(400, "messages: tool call arguments must be JSON.") from None
        parts.append(
            {"functionCall": {"id": call.get("id"), "name": function.get("name"), "args": args}}
        )
    return parts


def _tool_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    call_id = str(message.get("tool_call_id", ""))
    text = text_of(message.get("content"))
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    response = value if isinstance(value, dict) else {"result": value}
    return {
        "functionResponse": {"id": call_id, "name": names.get(call_id, ""), "response": response}
    }


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """Gemini contents and the system instruction from Chat Completions messages.

    Consecutive `tool` messages become one user content of function responses, as
    Gemini takes the results of parallel calls."""
    contents: list[dict[str, Any]] = []
    system: list[str] = []
    tool_results: list[dict[str, Any]] | None = None
    for message in messages:
        role = message.get("role")
        if role == "tool":
            part = _tool_response(message, tool_names(contents))
            if tool_results is None:
                tool_results = [part]
                contents.append({"role": "user", "parts": tool_results})
            else:
                tool_results.append(part)
            continue
        tool_results = None
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "user":
            contents.append({"role": "user", "parts": _user_parts(message.get("content"))})
        else:
            contents.append({"role": "model", "parts": _assistant_parts(message)})
    return contents, "\n".join(system) if system else None


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop is not None:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    for key, name in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(key) is not None:
            config[name] = body[key]
    if body.get("logprobs"):
        config["responseLogprobs"] = True
    if body.get("reasoning_effort") not in (None, "none"):
        config["thinkingConfig"] = {"includeThoughts": True}
    response_format = body.get("response_format") or {}
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = (response_format.get("json_schema") or {}).get("schema")
    elif isinstance(response_format, dict) and response_format.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    return config


def _declarations(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise EngineError(400, "tools must be a list.")
    declared = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise EngineError(400, "tools: each tool needs a function with a name.")
        declared.append(
            {
                "name": function["name"],
                "description": function.get("description", ""),
                "parameters": function.get("parameters") or {"type": "object"},
            }
        )
    return function_declarations(declared)


def _usage(usage: dict[str, int]) -> dict[str, Any]:
    prompt = usage.get("promptTokenCount", 0)
    completion = output_tokens(usage)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.get("thoughtsTokenCount", 0)},
    }


def _finish(reason: str | None, called: bool) -> str | None:
    if reason is None:
        return None
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _CONTENT_FILTER:
        return "content_filter"
    return "tool_calls" if called else "stop"


class OpenAIStream:
    """The chunks of one streamed chat completion."""

    def __init__(self, request: GenerateRequest, response_id: str, include_usage: bool) -> None:
        self._base = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
        }
        self._include_usage = include_usage
        self._calls = 0
        self._last: EngineChunk | None = None

    def _event(
        self, delta: dict[str, Any], finish: str | None = None, logprob: float | None = None
    ) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprob is not None:
            token = {"token": delta.get("content", ""), "logprob": logprob, "bytes": None}
            choice["logprobs"] = {"content": [{**token, "top_logprobs": []}]}
        return b"data: " + dumps({**self._base, "choices": [choice]}).encode() + b"\n\n"

    def open(self, input_tokens: int) -> bytes:
        return self._event({"role": "assistant", "content": ""})

    def chunk(self, chunk: EngineChunk) -> bytes:
        self._last = chunk
        out: list[bytes] = []
        for part in chunk.parts:
            call = part.get("functionCall")
            if isinstance(call, dict):
                out.extend(self._call_events(call))
            elif part.get("thought"):
                out.append(self._event({"reasoning_content": part.get("text", "")}))
            elif "text" in part:
                out.append(self._event({"content": part["text"]}, logprob=chunk.logprob))
        return b"".join(out)

    def _call_events(self, call: dict[str, Any]) -> list[bytes]:
        index = self._calls
        self._calls += 1
        start = {
            "index": index,
            "id": call.get("id"),
            "type": "function",
            "function": {"name": call.get("name"), "arguments": ""},
        }
        events = [self._event({"tool_calls": [start]})]
        for fragment in json_fragments(call.get("args") or {}):
            piece = {"index": index, "function": {"arguments": fragment}}
            events.append(self._event({"tool_calls": [piece]}))
        return events

    def close(self) -> bytes:
        out = b""
        last = self._last
        finish = _finish(last.finish_reason, self._calls > 0) if last else None
        if finish is not None:
            out += self._event({}, finish)
        if self._include_usage:
            usage = _usage(last.usage if last else {})
            payload = {**self._base, "choices": [], "usage": usage}
            out += b"data: " + dumps(payload).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def error(self, code: int, message: str | None = None) -> bytes:
        return b"data: " + error_json(code, message) + b"\n\n"

    def garbage(self, payload: bytes) -> bytes:
        return b"data: " + payload + b"\n\n"


class OpenAIWire:
    """The Chat Completions wire format (`wire/base.py`'s `Wire`)."""

    request_id_header = "x-request-id"

    def key_ok(self, request: web.Request, token: str) -> bool:
        return bearer_or_key_ok(request, token)

    def to_request(self, body: Any) -> tuple[GenerateRequest, dict[str, Any]]:
        if not isinstance(body, dict):
            raise EngineError(400, "We could not parse the JSON body of your request.")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise EngineError(400, "you must provide a model parameter")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in _ROLES for m in messages
        ):
            raise EngineError(400, "messages must be a list of messages with a valid role.")
        contents, system = _contents(messages)
        stream = bool(body.get("stream"))
        options = body.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        tools = _declarations(body.get("tools") or [])
        greq = GenerateRequest(model, contents, system, _config(body), tools, stream)
        return greq, {"include_usage": include_usage}

    def error_reply(self, code: int, message: str | None = None) -> Reply:
        return Reply(code, error_json(code, message))

    def fault_reply(self, fault: Fault, model: str) -> Reply:
        if fault.quota in ("day", "zero"):
            return Reply(429, error_json(429, _BILLING_MESSAGE, kind="insufficient_quota"))
        if fault.quota == "minute":
            reset = go_duration(fault.delay)
            headers = (
                ("retry-after", f"{fault.delay:g}"),
                ("retry-after-ms", str(round(fault.delay * 1000))),
                ("x-ratelimit-limit-requests", "10"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", reset),
                ("x-ratelimit-reset-tokens", reset),
            )
            message = f"Rate limit reached for {model} on requests per min (RPM): Limit 10."
            return Reply(429, error_json(429, message), headers=headers)
        return self.error_reply(fault.code)

    def stream(
        self, request: GenerateRequest, response_id: str, options: dict[str, Any]
    ) -> OpenAIStream:
        return OpenAIStream(request, response_id, bool(options.get("include_usage")))

    def merge(
        self, chunks: list[EngineChunk], request: GenerateRequest, response_id: str
    ) -> dict[str, Any]:
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for chunk in chunks:
            for part in chunk.parts:
                call = part.get("functionCall")
                if isinstance(call, dict):
                    arguments = dumps(call.get("args") or {})
                    function = {"name": call.get("name"), "arguments": arguments}
                    calls.append({"id": call.get("id"), "type": "function", "function": function})
                elif part.get("thought"):
                    thoughts.append(str(part.get("text", "")))
                elif "text" in part:
                    texts.append(str(part["text"]))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        last = chunks[-1] if chunks else None
        finish = _finish(last.finish_reason, bool(calls)) if last else None
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop"}],
            "usage": _usage(last.usage if last else {}),
        }

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model(m) for m in MODELS]}

    def model(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "agentrt"}
