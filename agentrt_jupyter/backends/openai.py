"""The OpenAI Chat Completions backend: the `openai` SDK's `AsyncOpenAI` on the runtime loop.

Chat Completions is the API every OpenAI-compatible server speaks (OpenAI, Ollama, vLLM,
llama.cpp's server, LM Studio, LiteLLM's proxy, OpenRouter), so `provider` only names
the service in messages and picks the spelling of a few settings. The SDK is imported
when a backend is made (a missing one is `InvalidConfig` naming the extra) and its own
retries are off: `retry.py` retries, one ledger row per attempt. Every SDK and transport
error is translated in `translate_errors`, the one boundary, without chaining the SDK's
exception; messages the service sends are scrubbed of the key.

A stream asks for usage (`stream_options.include_usage`); a server that sends none gives
chunks whose usage is None. Tool-call fragments are assembled per index and each call is
yielded whole, as one `FunctionCallPart`, when the choice finishes.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import math
import os
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..config import AgentConfig
from ..content import BlobPart, FunctionCallPart, FunctionResponsePart, Part, TextPart
from ..conversation import ConversationMessage, Usage
from ..errors import BackendError, InvalidConfig, InvalidContent, StreamBroken
from ..quota import QuotaInfo, fingerprint
from .base import Embeddings, ModelChunk, ModelRequest, QuotaHit, excerpt

if TYPE_CHECKING:
    import httpx2
    import openai
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall
    from openai.types.completion_usage import CompletionUsage

NO_KEY = "no-key"
"""Sent as the key to a compatible server given none (Ollama needs none; the SDK wants one)."""
FINISH_REASONS = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}
"""Chat Completions finish reasons as the agent knows them (Gemini's); others are OTHER."""
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}
TEXT_TYPES = frozenset({"application/json", "application/xml", "application/x-python"})
"""Blobs sent as text: Chat Completions has no part for them, their words are what counts."""
OPENAI_MAX_STOP = 4
BILLING_CODES = frozenset({"insufficient_quota", "billing_not_active"})
"""429 codes that mean no credit: waiting will not help, adding credit will."""
_KEY_ECHO = re.compile(r"(API key provided: )\S+")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_LONGEST_WAIT = 1e9


def _load_sdk(provider: str) -> ModuleType:
    try:
        import openai
    except ImportError:
        raise InvalidConfig(
            f"the {provider} provider needs the [openai] extra: "
            "pip install 'agentrt-jupyter[openai]'",
            field="model",
        ) from None
    return openai


class _Scrubber:
    """Takes the key out of text the service sent (an error may echo it, masked or not)."""

    __slots__ = ("_key",)

    def __init__(self, key: str | None) -> None:
        self._key = key if key and len(key) >= 4 else None

    def __call__(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "***")
        return _KEY_ECHO.sub(r"\1***", text)

    def __repr__(self) -> str:
        return "<_Scrubber>"


class OpenAIBackend:
    """`AsyncOpenAI` for one credential and endpoint (any OpenAI-compatible server).

    For the "openai" provider without a base URL, a key not given comes from
    OPENAI_API_KEY (and the host from OPENAI_BASE_URL); a server at its own base URL, or
    another provider's, is never sent that key."""

    def __init__(
        self, *, api_key: str | None, base_url: str | None, provider: str = "openai"
    ) -> None:
        sdk = _load_sdk(provider)
        if provider == "openai" and base_url is None:
            api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
            base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
            if api_key is None:
                raise InvalidConfig(
                    "the openai provider needs an API key: pass api_key=... or set OPENAI_API_KEY",
                    field="api_key",
                )
        self.provider = provider
        self.base_url = base_url
        self.credential = fingerprint(api_key, base_url)
        self._sdk = sdk
        self._scrub = _Scrubber(api_key)
        self._client = sdk.AsyncOpenAI(api_key=api_key or NO_KEY, base_url=base_url, max_retries=0)

    def __repr__(self) -> str:
        netloc = urllib.parse.urlsplit(self.base_url).netloc if self.base_url else ""
        host = netloc.rpartition("@")[2]  # never a user:password@
        return f"<OpenAIBackend {self.provider} {host or 'api.openai.com'}>"

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        try:
            body = chat_body(request, self.provider)
        except (InvalidConfig, InvalidContent) as exc:
            raise BackendError(f"not sent: {exc}", status="INVALID_ARGUMENT") from None
        yielded = [0]
        calls = ToolCallAssembler()
        with translate_errors(self._sdk, yielded, self._scrub):
            stream = await self._client.chat.completions.create(**body)
            async with stream:
                async for chunk in stream:
                    read = read_chunk(chunk, calls)
                    if read is not None:
                        yielded[0] += 1
                        yield read
            if calls.pending:
                yield ModelChunk(tuple(calls.flush()), None)
            elif not yielded[0]:
                raise BackendError(
                    "the service ended the stream with no chunks (is base_url an "
                    "OpenAI-compatible API, ending in /v1?)",
                    status="BAD_RESPONSE",
                )

    async def embed(self, texts: Sequence[str], model: str) -> Embeddings:
        """`/v1/embeddings` with every text in one call (floats asked for, so no numpy)."""
        with translate_errors(self._sdk, [0], self._scrub):
            response = await self._client.embeddings.create(
                model=model, input=list(texts), encoding_format="float"
            )
            ordered = sorted(response.data, key=lambda item: item.index)
            vectors = [[float(v) for v in item.embedding] for item in ordered]
            tokens = response.usage.prompt_tokens if response.usage is not None else None
        if len(vectors) != len(texts):
            raise BackendError(
                f"asked for {len(texts)} embeddings, the service sent {len(vectors)}",
                status="BAD_RESPONSE",
            )
        return Embeddings(vectors, tokens)

    async def aclose(self) -> None:
        await self._client.close()

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client, for calls beyond a chat (map's Batch mode); runtime loop only."""
        return self._client  # type: ignore[no-any-return]

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """This module's error boundary for a call that streams nothing (key scrubbed)."""
        return translate_errors(self._sdk, [0], self._scrub)


def chat_body(request: ModelRequest, provider: str) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for one streamed request.

    `InvalidConfig` for a setting the provider cannot honour, `InvalidContent` for a part
    it cannot take, before anything is sent."""
    cfg = request.config
    check_config(cfg, provider)
    model = request.model
    if model.startswith(f"{provider}:"):
        model = model[len(provider) + 1 :]
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(request.messages, request.system_instruction, provider),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    limit_name = "max_completion_tokens" if provider == "openai" else "max_tokens"
    for name, value in (
        ("temperature", cfg.temperature),
        ("top_p", cfg.top_p),
        (limit_name, cfg.max_output_tokens),
        ("seed", cfg.seed),
        ("stop", list(cfg.stop_sequences) or None),
        ("reasoning_effort", reasoning_effort(cfg.thinking_budget)),
        ("response_format", response_format(cfg)),
        ("logprobs", cfg.logprobs or None),
    ):
        if value is not None:
            body[name] = value
    if request.with_tools and cfg.tool_list:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in cfg.tool_list
        ]
    return body


def check_config(config: AgentConfig, provider: str) -> None:
    """`InvalidConfig` naming a setting Chat Completions cannot honour, and the provider."""
    if config.top_k is not None:
        raise InvalidConfig(
            f"the {provider} provider (Chat Completions) has no top_k: leave it unset or use top_p",
            field="top_k",
        )
    mime = config.response_mime_type
    if mime not in (None, "text/plain", "application/json"):
        raise InvalidConfig(
            f"the {provider} provider answers text or JSON only, not {mime!r}",
            field="response_mime_type",
        )
    if provider == "openai" and len(config.stop_sequences) > OPENAI_MAX_STOP:
        raise InvalidConfig(
            f"the openai provider takes at most {OPENAI_MAX_STOP} stop sequences, got "
            f"{len(config.stop_sequences)}",
            field="stop_sequences",
        )


def reasoning_effort(thinking_budget: int | None) -> str | None:
    """A thinking budget in tokens as Chat Completions' `reasoning_effort` (-1: dynamic)."""
    if thinking_budget is None:
        return None
    if thinking_budget == 0:
        return "none"
    if thinking_budget < 0:
        return "medium"
    if thinking_budget <= 2048:
        return "low"
    return "medium" if thinking_budget <= 16384 else "high"


def response_format(config: AgentConfig) -> dict[str, Any] | None:
    """A response schema as `json_schema` structured output; JSON without one as `json_object`."""
    if config.response_schema is not None:
        return {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": config.response_schema, "strict": False},
        }
    if config.response_mime_type == "application/json":
        return {"type": "json_object"}
    return None


def chat_messages(
    messages: Sequence[ConversationMessage], system: str | None, provider: str
) -> list[dict[str, Any]]:
    """Chat Completions messages from our history: thoughts and summaries left out, each
    tool result a `tool` message right after the call, ids given to calls that had none."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    ids = _CallIds()
    for message in messages:
        if message.role == "model":
            assistant = _assistant_message(message.parts, ids)
            if assistant is not None:
                out.append(assistant)
        elif message.role == "user":
            out.extend(_user_messages(message.parts, ids, provider))
    return out


class _CallIds:
    """The id each call goes by on the wire; a call without one (from Gemini, or a server
    that sent none) is given `call_N` by position, and its result finds it by name."""

    def __init__(self) -> None:
        self._made = 0
        self._open: list[tuple[str, str]] = []

    def call(self, part: FunctionCallPart) -> str:
        self._made += 1
        wire_id = part.id or f"call_{self._made}"
        self._open.append((part.name, wire_id))
        return wire_id

    def result(self, part: FunctionResponsePart) -> str:
        for index, (name, wire_id) in enumerate(self._open):
            if wire_id == part.id or (part.id is None and name == part.name):
                del self._open[index]
                return wire_id
        return part.id or f"call_unmatched_{part.name}"


def _assistant_message(parts: Sequence[Part], ids: _CallIds) -> dict[str, Any] | None:
    """An assistant message; one of only tool calls has an empty `content`: OpenAI takes
    it, llama-cpp-python's server refuses a null one and chat templates that read
    `message['content']` (SmolLM2's, many others) fail on a missing one."""
    text = "".join(p.text for p in parts if isinstance(p, TextPart) and not p.thought)
    calls = [
        {
            "id": ids.call(p),
            "type": "function",
            "function": {"name": p.name, "arguments": json.dumps(p.args, ensure_ascii=False)},
        }
        for p in parts
        if isinstance(p, FunctionCallPart)
    ]
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


def _user_messages(parts: Sequence[Part], ids: _CallIds, provider: str) -> list[dict[str, Any]]:
    """Tool results first (they answer the previous assistant message), then the rest."""
    out: list[dict[str, Any]] = [
        {
            "role": "tool",
            "tool_call_id": ids.result(p),
            "content": json.dumps(p.response, ensure_ascii=False, default=str),
        }
        for p in parts
        if isinstance(p, FunctionResponsePart)
    ]
    content = [
        _content_part(p, provider)
        for p in parts
        if isinstance(p, BlobPart) or (isinstance(p, TextPart) and not p.thought)
    ]
    if content and all(c["type"] == "text" for c in content):
        out.append({"role": "user", "content": "".join(c["text"] for c in content)})
    elif content:
        out.append({"role": "user", "content": content})
    return out


def _content_part(part: TextPart | BlobPart, provider: str) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    mime = part.mime_type
    if mime in IMAGE_TYPES:
        return {"type": "image_url", "image_url": {"url": _data_url(part)}}
    if mime == "application/pdf" and provider == "openai":
        return {"type": "file", "file": {"filename": "document.pdf", "file_data": _data_url(part)}}
    if mime in AUDIO_FORMATS and provider == "openai":
        data = base64.b64encode(part.data).decode("ascii")
        return {"type": "input_audio", "input_audio": {"data": data, "format": AUDIO_FORMATS[mime]}}
    if mime.startswith("text/") or mime in TEXT_TYPES:
        try:
            return {"type": "text", "text": part.data.decode("utf-8")}
        except UnicodeDecodeError:
            raise InvalidContent(
                f"the {provider} provider takes {mime} content as text, and this one is not UTF-8"
            ) from None
    raise InvalidContent(
        f"the {provider} provider (Chat Completions) cannot take a {mime} part: send "
        "images (PNG, JPEG, GIF, WebP), text"
        + (", PDFs or WAV/MP3 audio" if provider == "openai" else "")
    )


def _data_url(part: BlobPart) -> str:
    return f"data:{part.mime_type};base64,{base64.b64encode(part.data).decode('ascii')}"


def check_parts(parts: Sequence[Part], provider: str) -> None:
    """`InvalidContent` naming the provider and the first part it cannot take."""
    for part in parts:
        if isinstance(part, BlobPart):
            _content_part(part, provider)


class ToolCallAssembler:
    """Streamed tool-call fragments, put together per index until the choice finishes."""

    def __init__(self) -> None:
        self._calls: dict[int, _PendingCall] = {}

    @property
    def pending(self) -> bool:
        return bool(self._calls)

    def add(self, deltas: Sequence[ChoiceDeltaToolCall]) -> None:
        for delta in deltas:
            index: object = delta.index  # the SDK does not validate what servers send
            if not isinstance(index, int):  # a server that numbers none: one call per id
                index = len(self._calls) - (0 if delta.id or not self._calls else 1)
            call = self._calls.setdefault(index, _PendingCall())
            call.add(delta)

    def flush(self) -> list[FunctionCallPart]:
        """The calls so far, complete, in index order; the assembler is empty again."""
        calls = [self._calls[index].part() for index in sorted(self._calls)]
        self._calls.clear()
        return calls


class _PendingCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name = ""
        self.arguments: list[str] = []

    def add(self, delta: ChoiceDeltaToolCall) -> None:
        if delta.id:
            self.id = _string(delta.id)
        function = delta.function
        if function is None:
            return
        name = _string(function.name)
        if name and name != self.name:  # some servers repeat the whole name per fragment
            self.name += name
        self.arguments.append(_string(function.arguments))

    def part(self) -> FunctionCallPart:
        text = "".join(self.arguments).strip()
        try:
            args = json.loads(text) if text else {}
        except (ValueError, RecursionError):
            args = None
        if not isinstance(args, dict):
            raise BackendError(
                f"the model called {self.name!r} with arguments that are not a JSON object: "
                f"{excerpt(text)}",
                status="BAD_RESPONSE",
            )
        return FunctionCallPart(self.name, args, self.id)


def read_chunk(chunk: ChatCompletionChunk, calls: ToolCallAssembler) -> ModelChunk | None:
    """What one streamed chunk adds (None: nothing, like the opening `role` chunk)."""
    parts: list[Part] = []
    finish: str | None = None
    logprobs: tuple[float, ...] = ()
    for choice in chunk.choices or ():
        if choice.index not in (0, None):
            continue
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = tuple(token.logprob for token in choice.logprobs.content)
        delta = choice.delta
        if delta is not None:
            extra = delta.model_extra or {}
            thought = _string(extra.get("reasoning_content") or extra.get("reasoning"))
            if thought:
                parts.append(TextPart(thought, True))
            for text in (_string(delta.content), _string(delta.refusal)):
                if text:
                    parts.append(TextPart(text))
            if delta.tool_calls:
                calls.add(delta.tool_calls)
        if choice.finish_reason:  # some servers send "" on every chunk but the last
            finish = FINISH_REASONS.get(_string(choice.finish_reason), "OTHER")
            parts.extend(calls.flush())
    usage = usage_of(chunk.usage) if chunk.usage is not None else None
    if not parts and usage is None and finish is None and not logprobs:
        return None
    return ModelChunk(tuple(parts), usage, finish, logprobs)


def usage_of(usage: CompletionUsage) -> Usage:
    """OpenAI's counts as ours: reasoning tokens are thoughts, not candidates (as Gemini's)."""
    prompt = _count(usage.prompt_tokens)
    completion = _count(usage.completion_tokens)
    details = usage.completion_tokens_details
    reasoning = _count(details.reasoning_tokens) if details is not None else 0
    prompt_details = usage.prompt_tokens_details
    cached = _count(prompt_details.cached_tokens) if prompt_details is not None else 0
    return Usage(
        prompt_tokens=prompt,
        cached_tokens=cached,
        candidates_tokens=max(0, completion - reasoning),
        thoughts_tokens=reasoning,
        total_tokens=_count(usage.total_tokens) or prompt + completion,
    )


def _count(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"a token count is {excerpt(value)}")
    return int(value)


def _string(value: object) -> str:
    """A text field of a chunk: the SDK does not validate, so a wrong type is caught here."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {excerpt(value)}")
    return value


@contextlib.contextmanager
def translate_errors(sdk: ModuleType, yielded: list[int], scrub: _Scrubber) -> Iterator[None]:
    """Map the SDK's errors to ours; `yielded[0]` counts the chunks passed on so far.

    Most specific first: a 429 is a `QuotaHit` (`insufficient_quota` is a billing
    refusal: it fails at once); another status is a `BackendError` with its code
    (retry.py retries 408 and 5xx); a connection that fails is retried before the first
    chunk and `StreamBroken` after it; an error event in the stream and a reply the SDK
    cannot parse are `BackendError`s."""
    error: BaseException | None = None
    try:
        yield
    except sdk.RateLimitError as exc:
        error = QuotaHit(quota_info(exc, scrub))
    except sdk.APIStatusError as exc:
        error = _status_error(exc, scrub)
    except sdk.APITimeoutError:
        error = StreamBroken("the connection timed out")
    except sdk.APIConnectionError as exc:
        error = _connection_error(exc, yielded[0])
    except sdk.APIError as exc:
        kind = exc.type or "error"
        error = BackendError(
            f"the service sent an error in the stream ({kind}): {excerpt(scrub(exc.message))}",
            status=kind,
        )
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        sent = getattr(exc, "doc", None) or str(exc)
        error = BackendError(
            "the service sent a reply that is not in Chat Completions' format "
            f"({exc.__class__.__name__}): {excerpt(scrub(sent))}",
            status="BAD_RESPONSE",
        )
    if error is not None:
        raise error from None


def _status_error(exc: openai.APIStatusError, scrub: _Scrubber) -> BackendError:
    if exc.response.history:
        return _redirect_error(exc.response.history[0])
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    shown = message if isinstance(message, str) and message else (body or exc.message)
    raw = shown if isinstance(shown, str) else json.dumps(shown, default=str)
    kind = exc.type if isinstance(exc.type, str) else None
    code = exc.status_code
    text = excerpt(scrub(raw))
    return BackendError(f"{code} {kind or 'error'}: {text}", code=code, status=kind)


def _redirect_error(first: httpx2.Response) -> BackendError:
    """A reply reached through a redirect (a 302 even turns the POST into a GET): a Chat
    Completions endpoint never redirects, so the error names the redirect and where it
    pointed (no query: it may carry tokens), not the reply it led to."""
    where = excerpt(first.headers.get("location", "").split("?", 1)[0]) or "the same place"
    return BackendError(
        f"the service answered a {first.status_code} redirect to {where}; a Chat Completions "
        "endpoint does not redirect: check base_url, or a proxy or login page between you "
        "and the service",
        code=first.status_code,
        status="REDIRECT",
    )


def _connection_error(exc: openai.APIConnectionError, yielded: int) -> BackendError | StreamBroken:
    cause = exc.__cause__
    name = cause.__class__.__name__ if cause is not None else exc.__class__.__name__
    if yielded:
        return StreamBroken(f"the reply stream was cut after {yielded} chunks ({name})")
    if name == "TooManyRedirects":
        return BackendError(
            "the service answered with redirects again and again; a Chat Completions "
            "endpoint does not redirect: check base_url, or a proxy or login page between "
            "you and the service",
            status="REDIRECT",
        )
    return BackendError(
        f"the connection failed before a reply ({name}: {excerpt(str(cause or exc))})",
        status="UNAVAILABLE",
    )


def quota_info(exc: openai.RateLimitError, scrub: _Scrubber) -> QuotaInfo:
    """What a 429 said: a billing refusal (`insufficient_quota`, scope "billing": waiting
    won't help) or a rate limit with its wait from `retry-after-ms` / `retry-after` /
    `x-ratelimit-reset-*`."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = scrub(message if isinstance(message, str) and message else exc.message)
    code = exc.code if isinstance(exc.code, str) else None
    if code in BILLING_CODES:
        return QuotaInfo("billing", None, code, text[:500])
    return QuotaInfo("minute", retry_after(exc.response.headers), code, text[:500])


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a 429's headers ask to wait: `retry-after-ms`, else `retry-after`
    (seconds or an HTTP date), else the longest `x-ratelimit-reset-*` of a limit used up."""
    milliseconds = _seconds(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    after = headers.get("retry-after")
    seconds = _seconds(after)
    if seconds is None and after:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            seconds = max(0.0, email.utils.parsedate_to_datetime(after).timestamp() - time.time())
    if seconds is not None:
        return seconds
    resets = {
        kind: go_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        for kind in ("requests", "tokens")
    }
    used_up = [
        reset
        for kind, reset in resets.items()
        if reset is not None and headers.get(f"x-ratelimit-remaining-{kind}") == "0"
    ]
    known = used_up or [reset for reset in resets.values() if reset is not None]
    return max(known) if known else None


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if 0 <= seconds < _LONGEST_WAIT else None


def go_duration(value: str | None) -> float | None:
    """Seconds of a duration as OpenAI writes it (`200ms`, `1s`, `6m0s`, `1h2m3.5s`)."""
    if not value:
        return None
    pieces = _GO_DURATION.findall(value)
    if not pieces or "".join(n + unit for n, unit in pieces) != value.strip():
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    seconds = sum(float(number) * scale[unit] for number, unit in pieces)
    return seconds if seconds < _LONGEST_WAIT else None
