"""The Anthropic backend: Messages through the official `anthropic` SDK's async client.

Imported only when an agent's endpoint is Anthropic's (the SDK is an optional extra).
Every SDK and transport error is translated in `translate_errors`, the one boundary; the
errors raised there never chain the SDK's exception (its request holds the key header).
The SDK's own retries are off (`max_retries=0`): `retry.py` retries, one ledger row each.

Thinking streams as it comes, one `TextPart(thought=True)` per `thinking_delta` (shown
like Gemini's thoughts); its signature arrives last, at the block's end, as an empty
signed thought that `Reply` joins to the thinking before it, since the block goes back
unchanged in the next request of a tool loop. The signature is kept tagged
(`SIGNATURE_TAG`), so another provider's signatures in a switched history are never
sent here, and ours never there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from ..config import AgentConfig
from ..content import BlobPart, FunctionCallPart, FunctionResponsePart, Part, TextPart
from ..conversation import ConversationMessage, Usage
from ..errors import BackendError, InvalidConfig, InvalidContent, StreamBroken, UsageProblem
from ..quota import QuotaInfo, QuotaScope, fingerprint
from .base import EXCERPT_CHARS, ModelChunk, ModelRequest, QuotaHit

try:
    import anthropic
except ImportError:  # the [anthropic] extra is not installed
    raise InvalidConfig(
        "the anthropic provider needs the [anthropic] extra: "
        "pip install 'agentrt-jupyter[anthropic]'",
        field="model",
    ) from None

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 8192
"""`max_tokens` (required by Messages) when the agent sets no `max_output_tokens`: what
every current Claude model can give; a thinking budget is added on top of it."""
DEFAULT_THINKING_BUDGET = 2048
"""The thinking budget when an agent asks for thoughts (`include_thoughts`) but sets none."""
MIN_THINKING_BUDGET = 1024
SIGNATURE_TAG = b"anthropic:"
REDACTED_TAG = b"anthropic-redacted:"
"""A redacted thinking block: no text, its opaque `data` kept as the signature."""
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TEXT_DOCUMENT_TYPES = frozenset({"application/json", "application/xml", "application/x-python"})
FINISH_REASONS = {
    "end_turn": "STOP",
    "stop_sequence": "STOP",
    "tool_use": "STOP",
    "pause_turn": "STOP",
    "max_tokens": "MAX_TOKENS",
    "model_context_window_exceeded": "MAX_TOKENS",
    "refusal": "SAFETY",
}
"""Messages' stop reasons as the Gemini finish reasons the agent understands."""
ERROR_CODES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "timeout_error": 408,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
"""The HTTP code of an error type, for an `event: error` that arrives in a 200 stream."""
BILLING_WORDS = ("credit balance", "billing", "purchase credits")
"""What a 400 or 403 says when it is a billing refusal (no credit), not a bad request."""


def check_config(config: AgentConfig) -> None:
    """`InvalidConfig` naming a setting Messages cannot honour (checked before sending)."""
    if config.seed is not None:
        raise _unsupported("seed", "has no seed")
    if config.temperature is not None and config.temperature > 1.0:
        raise _unsupported("temperature", "takes a temperature from 0 to 1")
    mime = config.response_mime_type
    if mime not in (None, "text/plain", "application/json"):
        raise _unsupported("response_mime_type", "answers text/plain or application/json")
    if mime == "application/json" and config.response_schema is None:
        raise _unsupported("response_mime_type", "gives JSON only for a response_schema")
    budget = config.thinking_budget
    if budget is not None and 0 < budget < MIN_THINKING_BUDGET:
        raise _unsupported("thinking_budget", f"needs a budget of at least {MIN_THINKING_BUDGET}")
    limit = config.max_output_tokens
    if budget is not None and budget > 0 and limit is not None and budget >= limit:
        raise _unsupported("thinking_budget", "needs a budget below max_output_tokens")


def _unsupported(field: str, why: str) -> InvalidConfig:
    return InvalidConfig(f"the {PROVIDER} provider {why}", field=field)


def _thinking(config: AgentConfig) -> dict[str, Any] | None:
    """Gemini's thinking settings in Messages' terms: -1 (the model decides) is adaptive,
    0 is none, a budget is a budget; thoughts asked for without one get the default."""
    budget = config.thinking_budget
    if budget == -1:
        return {"type": "adaptive"}
    if budget is None and config.include_thoughts:
        budget = DEFAULT_THINKING_BUDGET
    if not budget:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _max_tokens(config: AgentConfig, thinking: dict[str, Any] | None) -> int:
    if config.max_output_tokens is not None:
        return config.max_output_tokens
    budget = thinking.get("budget_tokens", 0) if thinking else 0
    return DEFAULT_MAX_TOKENS + int(budget)


def request_params(request: ModelRequest) -> dict[str, Any]:
    """The keyword arguments of `messages.create` for `request` (without `stream`)."""
    cfg = request.config
    check_config(cfg)
    thinking = _thinking(cfg)
    params: dict[str, Any] = {
        "model": request.model.removeprefix(f"{PROVIDER}:"),
        "max_tokens": _max_tokens(cfg, thinking),
        "messages": wire_messages(request.messages),
    }
    if request.system_instruction:
        params["system"] = request.system_instruction
    if cfg.stop_sequences:
        params["stop_sequences"] = list(cfg.stop_sequences)
    if thinking is not None:
        params["thinking"] = thinking
    if cfg.tool_list:
        # Declared even when this call may not use them: history with tool_use blocks
        # needs the tools it used.
        params["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in cfg.tool_list
        ]
        if not request.with_tools:
            params["tool_choice"] = {"type": "none"}
    # Fields that only some SDK versions take as arguments (2.x dropped the sampling
    # ones, older ones predate output_config) go as extra body fields: any SDK sends them.
    extra: dict[str, Any] = {
        name: value
        for name, value in (
            ("temperature", cfg.temperature),
            ("top_p", cfg.top_p),
            ("top_k", cfg.top_k),
        )
        if value is not None
    }
    if cfg.response_schema is not None:
        extra["output_config"] = {"format": {"type": "json_schema", "schema": cfg.response_schema}}
    if extra:
        params["extra_body"] = extra
    return params


def wire_messages(messages: Iterable[ConversationMessage]) -> list[dict[str, Any]]:
    """Messages' `messages`: roles merged, empty text and other providers' thoughts left out."""
    ids = _CallIds()
    wire: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "summary":
            continue
        role = "assistant" if message.role == "model" else "user"
        blocks = [b for p in message.parts if (b := _block(p, ids)) is not None]
        if not blocks:
            continue
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    return wire


class _CallIds:
    """Ids for tool calls that have none (a history from Gemini): each call gets one, and
    the next result for that tool name without an id takes it."""

    def __init__(self) -> None:
        self._count = 0
        self._waiting: dict[str, list[str]] = {}

    def call(self, part: FunctionCallPart) -> str:
        if part.id:
            return part.id
        self._count += 1
        made = f"toolu_agentrt_{self._count}"
        self._waiting.setdefault(part.name, []).append(made)
        return made

    def result(self, part: FunctionResponsePart) -> str:
        if part.id:
            return part.id
        waiting = self._waiting.get(part.name)
        if waiting:
            return waiting.pop(0)
        self._count += 1
        return f"toolu_agentrt_{self._count}"


def _block(part: Part, ids: _CallIds) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return _thought_block(part) if part.thought else _text_block(part.text)
    if isinstance(part, FunctionCallPart):
        return {"type": "tool_use", "id": ids.call(part), "name": part.name, "input": part.args}
    if isinstance(part, FunctionResponsePart):
        return _tool_result(part, ids.result(part))
    return blob_block(part)


def _text_block(text: str) -> dict[str, Any] | None:
    """Messages refuses text blocks of only whitespace."""
    return {"type": "text", "text": text} if text.strip() else None


def _thought_block(part: TextPart) -> dict[str, Any] | None:
    signature = part.thought_signature or b""
    if signature.startswith(SIGNATURE_TAG):
        sent = signature.removeprefix(SIGNATURE_TAG).decode()
        return {"type": "thinking", "thinking": part.text, "signature": sent}
    if signature.startswith(REDACTED_TAG):
        return {"type": "redacted_thinking", "data": signature.removeprefix(REDACTED_TAG).decode()}
    return None  # unsigned (cut short, or another provider's): Messages would refuse it


def _tool_result(part: FunctionResponsePart, call_id: str) -> dict[str, Any]:
    response = part.response
    error = response.get("error") if len(response) == 1 else None
    if isinstance(error, str):
        return {"type": "tool_result", "tool_use_id": call_id, "content": error, "is_error": True}
    text = json.dumps(response, default=str, ensure_ascii=False)
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def check_content(parts: Iterable[Part]) -> None:
    """`InvalidContent` naming a part Messages does not take (to refuse a turn before it
    is recorded; `stream` refuses it too, before sending)."""
    for part in parts:
        if isinstance(part, BlobPart):
            blob_block(part)


def blob_block(part: BlobPart) -> dict[str, Any]:
    """An image or document block; `InvalidContent` for what Messages does not take."""
    mime = part.mime_type
    if mime in IMAGE_TYPES or mime == "application/pdf":
        data = base64.b64encode(part.data).decode()
        kind = "image" if mime in IMAGE_TYPES else "document"
        return {"type": kind, "source": {"type": "base64", "media_type": mime, "data": data}}
    if mime.startswith("text/") or mime in TEXT_DOCUMENT_TYPES:
        text = part.data.decode("utf-8", errors="replace")
        return {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": text},
        }
    raise InvalidContent(
        f"the {PROVIDER} provider does not take {mime} parts ({len(part.data)} bytes): "
        "send text, images (JPEG, PNG, GIF, WebP), PDFs or text files"
    )


@dataclass
class _Counts:
    """The call's token counts so far (message_start, then message_delta's running totals)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    thinking: int = 0

    def update(self, usage: Mapping[str, Any]) -> Usage:
        """Take the counts `usage` (its JSON) has; the call's `Usage` as Gemini's fields
        count it: cache reads and writes are prompt tokens, thinking is not among the
        candidates. (A count it does not have, or has as null, stays as it was.)"""
        for name, field in _USAGE_FIELDS:
            value = usage.get(field)
            if isinstance(value, int):
                setattr(self, name, value)
        details = usage.get("output_tokens_details")
        if details is not None:
            self.thinking = details["thinking_tokens"]
        prompt = self.input + self.cache_read + self.cache_creation
        return Usage(
            prompt_tokens=prompt,
            cached_tokens=self.cache_read,
            candidates_tokens=max(0, self.output - self.thinking),
            thoughts_tokens=self.thinking,
            total_tokens=prompt + self.output,
        )


_USAGE_FIELDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_input_tokens"),
    ("cache_creation", "cache_creation_input_tokens"),
)


class _Block:
    """A content block being streamed: its kind and what has arrived of it."""

    __slots__ = ("call_id", "kind", "name", "pieces", "signature")

    def __init__(self, kind: str, name: str = "", call_id: str = "") -> None:
        self.kind = kind
        self.name = name
        self.call_id = call_id
        self.pieces: list[str] = []
        self.signature = b""


class MessageStream:
    """Turns one message's stream events (their JSON, as dicts) into chunks: text and
    thinking as they come, a thinking block's signature and a tool call once complete,
    the finish reason at `message_stop`. A field missing or of the wrong type raises
    KeyError or TypeError, which `translate_errors` makes BAD_RESPONSE."""

    def __init__(self) -> None:
        self.answered = False
        """The service answered (headers came): a failure to parse is then its reply's."""
        self.chunks = 0
        """Chunks with content handed out: a drop after one is a cut stream."""
        self._counts = _Counts()
        self._usage: Usage | None = None
        self._blocks: dict[int, _Block] = {}
        self._stop_reason: str | None = None

    def chunk(self, event: Mapping[str, Any]) -> ModelChunk | None:
        kind = event["type"]
        if kind == "content_block_delta":
            return self._delta(event["index"], event["delta"])
        if kind == "content_block_start":
            return self._start(event["index"], event["content_block"])
        if kind == "content_block_stop":
            return self._stop(event["index"])
        if kind == "message_start":
            self._usage = self._counts.update(event["message"]["usage"])
        elif kind == "message_delta":
            self._usage = self._counts.update(event["usage"])
            self._stop_reason = event["delta"].get("stop_reason")
        elif kind == "message_stop":
            reason = self._stop_reason
            finish = None if reason is None else FINISH_REASONS.get(reason, "OTHER")
            return ModelChunk((), self._usage, finish)
        return None

    def _content(self, part: Part) -> ModelChunk:
        self.chunks += 1
        return ModelChunk((part,), self._usage)

    def _start(self, index: int, block: Mapping[str, Any]) -> ModelChunk | None:
        kind = block["type"]
        if kind == "tool_use":
            self._blocks[index] = _Block(kind, block["name"], block["id"])
            if block["input"]:
                self._blocks[index].pieces.append(json.dumps(block["input"]))
        elif kind == "redacted_thinking":
            self._blocks[index] = _Block(kind)
            self._blocks[index].signature = REDACTED_TAG + block["data"].encode()
        else:
            self._blocks[index] = _Block(kind)
            if kind == "text" and block["text"]:
                return self._content(TextPart(block["text"]))
            if kind == "thinking" and block["thinking"]:
                return self._content(TextPart(block["thinking"], True))
        return None

    def _delta(self, index: int, delta: Mapping[str, Any]) -> ModelChunk | None:
        kind = delta["type"]
        if kind == "text_delta":
            return self._content(TextPart(delta["text"]))
        block = self._blocks.get(index)
        if block is None:
            raise ValueError(f"a {kind} for content block {index}, which never started")
        if kind == "input_json_delta":
            block.pieces.append(delta["partial_json"])
        elif kind == "thinking_delta":
            thinking = delta["thinking"]
            return self._content(TextPart(thinking, True)) if thinking else None
        elif kind == "signature_delta":
            block.signature = SIGNATURE_TAG + delta["signature"].encode()
        return None

    def _stop(self, index: int) -> ModelChunk | None:
        block = self._blocks.pop(index, None)
        if block is None:
            return None
        if block.kind == "tool_use":
            text = "".join(block.pieces)
            args = json.loads(text) if text else {}
            if not isinstance(args, dict):
                raise ValueError(f"tool input is not a JSON object: {text}")
            return self._content(FunctionCallPart(block.name, args, block.call_id))
        if block.kind in ("thinking", "redacted_thinking") and block.signature:
            # The signature of the thinking just streamed (or a redacted block whole).
            return self._content(TextPart("", True, block.signature))
        return None


def _shortened(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _error_body(body: object) -> tuple[str, str]:
    """The error type and message of an Anthropic error body (whatever shape it has)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return "error", _shortened(str(body or ""))
    kind, message = error.get("type"), error.get("message")
    return (
        kind if isinstance(kind, str) and kind else "error",
        _shortened(message if isinstance(message, str) else json.dumps(error, default=str)),
    )


def _status_error(exc: anthropic.APIStatusError) -> BackendError | QuotaHit:
    if exc.response.history:
        first = exc.response.history[0]
        return _redirect_error(f"a {first.status_code} redirect", first.status_code)
    kind, message = _error_body(exc.body)
    code = exc.status_code if exc.status_code >= 400 else ERROR_CODES.get(kind, 500)
    if billing_refusal(code, kind, message):
        return QuotaHit(QuotaInfo("billing", None, kind, f"{code} {kind}: {message}"))
    if code == 429:
        retry_after, quota_id = rate_limit_wait(exc.response.headers)
        scope: QuotaScope = "minute" if retry_after is not None else "unknown"
        return QuotaHit(QuotaInfo(scope, retry_after, quota_id, f"429 {kind}: {message}"))
    return BackendError(f"{code} {kind}: {message}", code=code, status=kind)


def billing_refusal(code: int, kind: str, message: str) -> bool:
    """No credit: a `billing_error` (402), or a 400 `invalid_request_error` / 403
    `permission_error` that speaks of the credit balance or billing. Other 400s and 403s
    (a bad request, a key without access to a model) stay errors of their own."""
    if kind == "billing_error" or code == 402:
        return True
    said = message.lower()
    return code in (400, 403) and any(word in said for word in BILLING_WORDS)


def rate_limit_wait(headers: Mapping[str, str]) -> tuple[float | None, str | None]:
    """Seconds to wait after a 429, and the limit that ran out, from its headers:
    `retry-after-ms`, `retry-after` (seconds or a date), else the latest
    `anthropic-ratelimit-*-reset` of the limits with nothing remaining."""
    names = [(name.lower(), value.strip()) for name, value in headers.items()]
    exhausted = [
        name.removesuffix("-remaining")
        for name, value in names
        if name.startswith("anthropic-ratelimit-") and name.endswith("-remaining") and value == "0"
    ]
    quota_id = exhausted[0] if exhausted else None
    milliseconds = _seconds(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000, quota_id
    after = headers.get("retry-after")
    seconds = _seconds(after)
    if seconds is None and after:
        seconds = _until(after, parsedate_to_datetime)
    if seconds is None:
        resets = [
            _until(headers.get(f"{limit}-reset"), datetime.fromisoformat) for limit in exhausted
        ]
        seconds = max((s for s in resets if s is not None), default=None)
    return seconds, quota_id


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 1e9 else None


def _until(value: str | None, parse: Callable[[str], datetime]) -> float | None:
    """Seconds from now until the time `value` names (never negative), or None."""
    if not value:
        return None
    try:
        moment = parse(value.replace("Z", "+00:00"))
        return max(0.0, moment.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


@contextlib.contextmanager
def translate_errors(stream: MessageStream) -> Iterator[None]:
    """Map the SDK's and the transport's errors to ours, most specific first.

    A 429 is a `QuotaHit`; an HTTP error (or an `event: error` in the stream) is a
    `BackendError` with its code (529 overloaded included, which `retry.py` retries
    while nothing has streamed); a lost connection is `StreamBroken` once content has
    come, else a `BackendError` UNAVAILABLE; a reply that cannot be parsed is a
    `BackendError` BAD_RESPONSE."""
    error: BaseException | None = None
    try:
        yield
    except anthropic.APIStatusError as exc:
        error = _status_error(exc)
    except anthropic.APIConnectionError as exc:
        reason = f"{exc.__class__.__name__}: {_shortened(str(exc))}"
        if exc.__cause__.__class__.__name__ == "TooManyRedirects":
            error = _redirect_error("redirects again and again", None)
        elif stream.chunks:
            error = StreamBroken(
                f"the reply stream was cut after {stream.chunks} chunks ({reason})"
            )
        else:
            error = BackendError(
                f"the connection failed before a reply ({reason})", status="UNAVAILABLE"
            )
    except (anthropic.APIResponseValidationError, ValueError, TypeError, KeyError) as exc:
        if not stream.answered:  # the SDK refused to send it (no key, a bad argument)
            raise BackendError(
                f"the request could not be sent ({exc.__class__.__name__}): {_shortened(str(exc))}",
                status="INVALID_ARGUMENT",
            ) from None
        sent = getattr(exc, "doc", None) or str(exc)
        error = BackendError(
            "the service sent a reply that is not in Anthropic's format "
            f"({exc.__class__.__name__}): {_shortened(sent)}",
            status="BAD_RESPONSE",
        )
    except (AttributeError, IndexError) as exc:
        error = BackendError(
            f"the service sent a reply of an unexpected shape ({exc.__class__.__name__})",
            status="BAD_RESPONSE",
        )
    except anthropic.AnthropicError as exc:
        error = BackendError(f"{exc.__class__.__name__}: {_shortened(str(exc))}")
    if error is not None:
        raise error from None


def _redirect_error(what: str, code: int | None) -> BackendError:
    """A redirect (a 302 even turns the POST into a GET) or a loop of them: a Messages
    endpoint never redirects, so the error names the redirect, and it is not retried."""
    return BackendError(
        f"the service answered {what}; a Messages endpoint does not redirect: check "
        "base_url, or a proxy or login page between you and the service",
        code=code,
        status="REDIRECT",
    )


NO_KEY = "no-key"
"""Sent where an endpoint has no key (a keyless compatible server), never the environment's."""


class AnthropicBackend:
    """The `anthropic` SDK's async client for one key and endpoint."""

    def __init__(self, *, api_key: str | None, base_url: str | None) -> None:
        self.credential = fingerprint(api_key, base_url)
        self._base_url = base_url
        # Always an explicit key: given none, the SDK would read $ANTHROPIC_API_KEY,
        # $ANTHROPIC_AUTH_TOKEN or a profile itself and send it to this endpoint's host.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or NO_KEY, base_url=base_url, max_retries=0
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        try:
            params = request_params(request)
        except UsageProblem as exc:  # before anything is sent; a typed error of the turn
            raise BackendError(str(exc), status="INVALID_ARGUMENT") from None
        stream = MessageStream()
        with translate_errors(stream):
            # The SDK sends the request and raises on an `event: error`; its events are
            # read as plain JSON (`MessageStream` takes dicts): the pydantic model it
            # builds per event was about a quarter of its time per chunk.
            calling = self._client.messages.with_streaming_response.create(**params, stream=True)
            async with calling as response:
                stream.answered = True
                events: anthropic.AsyncStream[Any]
                events = await response.parse(to=anthropic.AsyncStream[object])
                async for event in events:
                    chunk = stream.chunk(event)
                    if chunk is not None:
                        yield chunk

    async def aclose(self) -> None:
        await self._client.close()

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK client, for calls beyond a chat (map's Batch mode); runtime loop only."""
        return self._client

    def __repr__(self) -> str:
        return f"AnthropicBackend(base_url={self._base_url!r}, credential={self.credential!r})"
