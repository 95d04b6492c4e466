"""The google-genai backend: `client.aio` on the runtime loop, our history, our errors.

Imported only on the runtime thread (google.genai costs ~0.5 s to import). Every SDK
and transport error is translated in `translate_errors`, the one boundary; the errors
raised there never chain the SDK's exception (its request holds the API key header).
The SDK's own retries are off (one attempt): the agent retries, one ledger row each.
"""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiohttp
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..content import BlobPart, FunctionCallPart, Part, TextPart
from ..conversation import ConversationMessage, Usage
from ..errors import BackendError, StreamBroken
from ..quota import fingerprint, parse_quota_error
from .base import Embeddings, ModelChunk, ModelRequest, QuotaHit, excerpt

READ_BUFFER = 2**22
"""The SDK's read buffer for its aiohttp session (a long JSON chunk fits one read)."""
_JSON_DECODER = json.decoder.__file__


class _NonTextPartsNote(logging.Filter):
    """Drops the SDK's "there are non-text parts in the response" warning: the SDK logs it
    when it reads a chunk's text to parse a response schema and the chunk is a function
    call. We read every part ourselves, so in a cell it would only be noise on stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Warning: there are non-text parts")


logging.getLogger("google_genai.types").addFilter(_NonTextPartsNote())


def _broken_stream_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        aiohttp.ClientPayloadError,
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientConnectionError,
    ]
    for module_name in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError):
            module = __import__(module_name)
            errors += [module.RemoteProtocolError, module.ReadError, module.NetworkError]
    return tuple(errors)


_BROKEN = _broken_stream_errors()


def _api_error(exc: genai_errors.APIError) -> BackendError | QuotaHit:
    code = exc.code if isinstance(exc.code, int) else None
    status = exc.status if isinstance(exc.status, str) else None
    message = exc.message if isinstance(exc.message, str) and exc.message else None
    if code == 429:
        return QuotaHit(parse_quota_error(exc.details, message or ""))
    shown = excerpt(message if message is not None else exc.details)
    return BackendError(f"{code} {status or 'error'}: {shown}", code=code, status=status)


@contextlib.contextmanager
def translate_errors(chunks: list[int]) -> Iterator[None]:
    """Map the SDK's and the transport's errors to ours; `chunks[0]` counts what arrived.

    Most specific first. A reply the SDK cannot parse (HTML, wrong JSON shapes, a cut
    body, JSON nested past the parser's recursion limit) is a `BackendError` with status
    BAD_RESPONSE and a short excerpt, never our catch-all. The turn's
    partial text is kept by the agent, which puts it on every TurnError.
    """
    error: BaseException | None = None
    try:
        yield
    except genai_errors.APIError as exc:
        error = _api_error(exc)
    except aiohttp.TooManyRedirects as exc:
        error = _redirect_error(exc)
    except aiohttp.ClientResponseError as exc:
        error = BackendError(
            f"{exc.status} {exc.__class__.__name__}: {excerpt(exc.message)}", code=exc.status
        )
    except _BROKEN as exc:
        if chunks[0]:
            error = StreamBroken(
                f"the reply stream was cut after {chunks[0]} chunks ({exc.__class__.__name__})"
            )
        else:
            error = BackendError(
                f"the connection failed before a reply ({exc.__class__.__name__}: "
                f"{excerpt(str(exc))})",
                status="UNAVAILABLE",
            )
    except TimeoutError:
        error = StreamBroken("the connection timed out")
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        sent = getattr(exc, "doc", None) or str(exc)
        error = BackendError(
            "the service sent a reply that is not in Gemini's format "
            f"({exc.__class__.__name__}): {excerpt(sent)}",
            status="BAD_RESPONSE",
        )
    except RecursionError as exc:
        error = BackendError(
            "the service sent JSON nested too deeply to parse: "
            f"{excerpt(_undecoded_document(exc) or str(exc))}",
            status="BAD_RESPONSE",
        )
    if error is not None:
        raise error from None


def _undecoded_document(exc: RecursionError) -> str | None:
    """The text `json` was decoding when it ran out of stack (its `raw_decode(s)`), for
    the excerpt: a RecursionError, unlike a JSONDecodeError, does not carry it."""
    document = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == _JSON_DECODER:
            text = frame.f_locals.get("s")
            document = text if isinstance(text, str) else document
    return document


def _redirect_error(exc: aiohttp.TooManyRedirects) -> BackendError:
    """A redirect loop: a Gemini endpoint never redirects, so the URL is likely wrong or a
    proxy or login page answers. Says the status and where it pointed (no query: it may
    carry tokens)."""
    last = exc.history[-1] if exc.history else None
    code = last.status if last is not None else None
    target = last.headers.get("Location", "") if last is not None else ""
    where = excerpt(target.split("?", 1)[0]) or "the same place"
    return BackendError(
        f"the service answered {code or 'a'} redirect to {where} again and again "
        f"({len(exc.history)} times); a Gemini endpoint does not redirect: check base_url, "
        "or a proxy or login page between you and the service",
        code=code,
        status="REDIRECT",
    )


def _part_to_wire(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        if part.thought:
            return None
        wire: dict[str, Any] = {"text": part.text}
    elif isinstance(part, BlobPart):
        wire = {"inline_data": {"data": part.data, "mime_type": part.mime_type}}
    elif isinstance(part, FunctionCallPart):
        wire = {"function_call": {"id": part.id, "name": part.name, "args": part.args}}
    else:
        wire = {"function_response": {"id": part.id, "name": part.name, "response": part.response}}
    signature = getattr(part, "thought_signature", None)
    if signature:
        wire["thought_signature"] = signature
    return wire


def wire_contents(messages: list[ConversationMessage]) -> list[dict[str, Any]]:
    """Gemini `contents`: thoughts dropped, empty messages skipped, same roles merged."""
    contents: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "summary":
            continue
        parts = [w for p in message.parts if (w := _part_to_wire(p)) is not None]
        if not parts or (message.role == "model" and all(p.get("text") == "" for p in parts)):
            continue
        if contents and contents[-1]["role"] == message.role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": message.role, "parts": parts})
    return contents


def _generation_config(request: ModelRequest) -> types.GenerateContentConfig | None:
    """The request's settings for the SDK; None when none is set: with a config, however
    empty, the SDK does more work for every streamed chunk (a failed attribute lookup
    raising inside pydantic, extra field filtering), ~10% of a plain stream's time."""
    cfg = request.config
    thinking = None
    if cfg.thinking_budget is not None or cfg.include_thoughts:
        thinking = types.ThinkingConfig(
            thinking_budget=cfg.thinking_budget, include_thoughts=cfg.include_thoughts or None
        )
    tools: list[Any] | None = None
    if request.with_tools and cfg.tool_list:
        tools = [
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name=t.name,
                        description=t.description,
                        parameters_json_schema=t.parameters,
                    )
                    for t in cfg.tool_list
                ]
            )
        ]
    schema = cfg.response_schema
    settings: dict[str, Any] = dict(
        system_instruction=request.system_instruction,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_output_tokens=cfg.max_output_tokens,
        stop_sequences=list(cfg.stop_sequences) or None,
        seed=cfg.seed,
        response_logprobs=cfg.logprobs or None,
        thinking_config=thinking,
        response_mime_type=cfg.response_mime_type
        or ("application/json" if schema is not None else None),
        response_json_schema=schema if isinstance(schema, dict) else None,
        response_schema=schema if isinstance(schema, type) else None,
        tools=tools,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True)
        if tools
        else None,
    )
    given = {name: value for name, value in settings.items() if value is not None}
    return types.GenerateContentConfig(**given) if given else None


def _chunk_from_response(response: types.GenerateContentResponse) -> ModelChunk:
    parts: list[Part] = []
    finish_reason: str | None = None
    logprobs: tuple[float, ...] = ()
    if response.candidates:
        candidate = response.candidates[0]
        logprobs = _logprobs(candidate)
        if candidate.finish_reason is not None:
            finish_reason = str(getattr(candidate.finish_reason, "value", candidate.finish_reason))
        for part in (candidate.content.parts if candidate.content else None) or []:
            signature = part.thought_signature
            if part.function_call is not None:
                call = part.function_call
                parts.append(
                    FunctionCallPart(call.name or "", dict(call.args or {}), call.id, signature)
                )
            elif part.text is not None and (part.text or signature):
                parts.append(TextPart(part.text, bool(part.thought), signature))
    elif response.prompt_feedback is not None and response.prompt_feedback.block_reason:
        reason = response.prompt_feedback.block_reason
        raise BackendError(
            f"the prompt was blocked ({getattr(reason, 'value', reason)})", status="BLOCKED"
        )
    usage = Usage.from_metadata(response.usage_metadata) if response.usage_metadata else None
    return ModelChunk(tuple(parts), usage, finish_reason, logprobs)


def _logprobs(candidate: types.Candidate) -> tuple[float, ...]:
    """The chunk's token log probabilities, else its mean (`avg_logprobs`), else none."""
    chosen = candidate.logprobs_result.chosen_candidates if candidate.logprobs_result else None
    tokens = tuple(c.log_probability for c in chosen or () if c.log_probability is not None)
    if tokens:
        return tokens
    return () if candidate.avg_logprobs is None else (candidate.avg_logprobs,)


class GeminiBackend:
    """google-genai's async client for one credential and endpoint (Gemini's API, or
    Vertex AI's with `vertexai=True`, its project and location)."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        api_version: str | None,
        vertexai: bool = False,
        project: str | None = None,
        location: str | None = None,
    ) -> None:
        account = f"{api_key or ''} vertex:{project}/{location}" if vertexai else api_key
        self.credential = fingerprint(account, base_url)
        self._session = _session_without_env_lookups()
        options = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            retry_options=types.HttpRetryOptions(attempts=1),
            aiohttp_client=self._session,
        )
        try:
            if vertexai:
                self._client = genai.Client(
                    vertexai=True,
                    api_key=api_key,
                    project=project,
                    location=location,
                    http_options=options,
                )
            else:
                self._client = genai.Client(api_key=api_key, http_options=options)
        except BaseException:
            if self._session is not None:  # unused: nothing to close but its empty pool
                self._session.detach()
            raise

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        chunks = [0]
        config = _generation_config(request)
        contents = wire_contents(request.messages)
        with translate_errors(chunks):
            iterator = await self._client.aio.models.generate_content_stream(
                model=request.model, contents=contents, config=config
            )
            async for response in iterator:
                chunks[0] += 1
                yield _chunk_from_response(response)

    async def embed(self, texts: Sequence[str], model: str) -> Embeddings:
        """`models.embed_content` with every text in one call (`batchEmbedContents` on
        Gemini's API); the API does not count tokens for embeddings."""
        with translate_errors([0]):
            response = await self._client.aio.models.embed_content(
                model=model, contents=list(texts)
            )
            vectors = [list(e.values or []) for e in response.embeddings or []]
        if len(vectors) != len(texts):
            raise BackendError(
                f"asked for {len(texts)} embeddings, the service sent {len(vectors)}",
                status="BAD_RESPONSE",
            )
        return Embeddings(vectors)

    @property
    def client(self) -> genai.Client:
        """The SDK client (for the Batch API, which is not a model stream)."""
        return self._client

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        self._client.close()
        if self._session is not None:
            await self._session.close()


def _session_without_env_lookups() -> aiohttp.ClientSession | None:
    """The SDK's own aiohttp session, but with `trust_env` off when the environment names
    no proxy and there is no netrc: with it on, aiohttp looks both up again for every
    request, each lookup a trip through the loop's executor (two thread hops per call,
    ~10% of a short turn). Where the environment does route requests, None: the SDK's
    session, which follows it. Made on the runtime loop (the backend is made there)."""
    from aiohttp import helpers

    if helpers.proxies_from_env() or helpers.netrc_from_env() is not None:
        return None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), trust_env=False, read_bufsize=READ_BUFFER
    )


def first_turn_models() -> tuple[type[Any], ...]:
    """The google-genai models a short turn builds: its config and request, then each
    streamed response. The SDK builds a model on its first use (`defer_build`), ~50 ms
    for these (several times that on a busy machine): the first turn's time otherwise."""
    return (
        types.GenerateContentConfig,
        types._GenerateContentParameters,
        types.Part,
        types.Content,
        types.HttpResponse,
        types.GenerateContentResponse,
        types.Candidate,
        types.GenerateContentResponseUsageMetadata,
    )
