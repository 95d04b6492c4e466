"""What a wire format supplies to the HTTP layer, and helpers both formats share."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any, Protocol

from aiohttp import web

from ..engines.base import EngineChunk, GenerateRequest
from ..faults import Fault, Reply


class WireStream(Protocol):
    """The SSE events of one streamed reply, in order: `open`, `chunk`s, then `close`
    (or `error` or `garbage` in place of `close`)."""

    def open(self, input_tokens: int) -> bytes: ...

    def chunk(self, chunk: EngineChunk) -> bytes: ...

    def close(self) -> bytes: ...

    def error(self, code: int, message: str | None = None) -> bytes: ...

    def garbage(self, payload: bytes) -> bytes:
        """An event a client reads as this format's, holding `payload` (not JSON)."""
        ...


class Wire(Protocol):
    """One provider's wire format."""

    request_id_header: str
    """The header its SDK reads a request id from (`_request_id` on replies and errors)."""

    def key_ok(self, request: web.Request, token: str) -> bool: ...

    def to_request(self, body: Any) -> tuple[GenerateRequest, dict[str, Any]]:
        """The engine's request and the options its reply's encoding needs; EngineError
        (400) if `body` is malformed."""
        ...

    def error_reply(self, code: int, message: str | None = None) -> Reply:
        """This provider's error body (and headers) for an HTTP error `code`."""
        ...

    def fault_reply(self, fault: Fault, model: str) -> Reply:
        """The reply an `http_error` fault (`CODE`, `429 ...`) sends in this format."""
        ...

    def stream(
        self, request: GenerateRequest, response_id: str, options: dict[str, Any]
    ) -> WireStream: ...

    def merge(
        self, chunks: list[EngineChunk], request: GenerateRequest, response_id: str
    ) -> dict[str, Any]:
        """The non-streaming reply body."""
        ...

    def models(self) -> dict[str, Any]: ...

    def model(self, model: str) -> dict[str, Any]: ...


def bearer_or_key_ok(request: web.Request, token: str, key_header: str | None = None) -> bool:
    """Whether the request carries `token` as `Authorization: Bearer` (or in `key_header`)."""
    if key_header is not None and key_header in request.headers:
        key = request.headers[key_header]
    else:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
    return secrets.compare_digest(key.strip().encode(), token.encode())


def text_of(content: Any) -> str:
    """The text of a message content that is a string or a list of `text` blocks (the
    shape OpenAI's and Anthropic's formats share)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def signature(text: str) -> str:
    """A stable opaque signature for a thinking block (what a client must send back)."""
    return "agentrt-sig-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def output_tokens(usage: dict[str, int]) -> int:
    """Reply tokens the provider bills as output: visible ones plus thoughts."""
    return usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)


def json_fragments(value: dict[str, Any], pieces: int = 3) -> list[str]:
    """`value` as JSON cut into up to `pieces` string fragments, as providers stream
    tool arguments."""
    text = dumps(value)
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def tool_names(contents: list[dict[str, Any]]) -> dict[str, str]:
    """Function-call ids mapped to their names, from the model's earlier turns."""
    names: dict[str, str] = {}
    for content in contents:
        for part in content.get("parts") or []:
            call = part.get("functionCall")
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                names[call["id"]] = str(call.get("name", ""))
    return names


def function_declarations(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemini's tools list holding these declarations (empty if none)."""
    return [{"functionDeclarations": tools}] if tools else []
