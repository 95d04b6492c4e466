"""The aiohttp app: model routes in three wire formats, SSE writing, faults and the
control API.

Model routes speak Gemini's REST API (`/v1/...` and `/v1beta/...`; Vertex AI's
publisher-model paths under `/v1/` and `/v1beta1/`, with `projects/P/locations/L/` or
without (express mode), take the same calls and a bearer token too), OpenAI's Chat
Completions (`/v1/chat/completions`) and Anthropic's Messages (`/v1/messages`), and
embeddings (Gemini's `:embedContent` / `:batchEmbedContents`, where queued faults that
act before the headers apply too; OpenAI's `/v1/embeddings`; kind `embed` in the request
log) from engines that embed; `GET
/v1/models` answers in the format of the SDK that asks. `wire/` holds the formats. All
need the per-process token as the API key, each as its provider takes it; a request with
a wrong key is refused before its body is read. Control
routes under `/_agentrt/` need it as `x-agentrt-token`; they let tests read what arrived
(`request_log.py` describes the records), wait for a request to finish and queue faults.
The Batch and Files API routes are served by `batches.py`, Anthropic's Message Batches by
`wire/message_batches.py`, OpenAI's Files and Batch APIs by `wire/openai_batches.py`
(their `/v1/files` and `/v1/batches` paths are told from Gemini's by the bearer key);
their requests are logged too (kinds `batch_create`,
`batch_get`, `batch_list`, `batch_cancel`, `batch_delete`, `batch_results`,
`file_create`, `file_upload`, `file_get`, `file_download`, `file_delete`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

from aiohttp import web

from .batches import BatchService
from .connections import track_requests
from .engines.base import (
    Embedded,
    Engine,
    EngineChunk,
    EngineError,
    GenerateRequest,
    prompt_message,
)
from .faults import (
    NO_FAULT,
    REDIRECT_CODES,
    REDIRECT_MARKER,
    STATUS_NAMES,
    BeforeHeaders,
    Drop,
    Event,
    Fault,
    FaultPlan,
    FaultQueue,
    Hang,
    RateLimit,
    Redirect,
    Reply,
    Truncate,
    error_body,
    parse_fault,
    tiny_chunks,
)
from .limits import ServerLimits
from .request_log import Record, RequestLog
from .wire import embeddings
from .wire.anthropic import AnthropicWire
from .wire.base import Wire, bearer_or_key_ok
from .wire.gemini import KNOWN_MODELS, ChunkEncoder, merge_chunks, to_generate_request
from .wire.message_batches import MessageBatchService
from .wire.openai import OpenAIWire
from .wire.openai_batches import OpenAIBatchService

logger = logging.getLogger("agentrt_jupyter.server")

API_KEY_ERROR = "API key not valid. Please pass a valid API key."
_MAX_WAIT = 600.0
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _parse_json(raw: bytes) -> Any:
    """The body's JSON, or None if it is not JSON (to_generate_request then refuses it)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=_compact(data), status=status, content_type="application/json", charset="utf-8"
    )


def _tcp_nodelay(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def _float_query(request: web.Request, name: str, default: float) -> float:
    try:
        return min(max(float(request.query.get(name, default)), 0.0), _MAX_WAIT)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number") from None


def _int_query(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None


async def _forever() -> NoReturn:
    """Wait until cancelled: aiohttp cancels the handler when the client goes away."""
    await asyncio.Event().wait()
    raise AssertionError("an event nobody sets never fires")


async def _aiter(items: Iterable[EngineChunk]) -> AsyncIterator[EngineChunk]:
    for item in items:
        yield item


def _base(request: web.Request) -> str:
    """This server's URL as the client reached it (for URLs in replies)."""
    return f"{request.scheme}://{request.host}"


def _redirect(request: web.Request, status: int) -> web.Response:
    """A redirect to the request's own URL, marked so that following it loops."""
    location = request.rel_url.update_query({REDIRECT_MARKER: str(status)})
    return web.Response(status=status, headers={"Location": str(location)})


class _Refusal(Exception):
    """A request refused before its body was read; answered with a Gemini error JSON.

    The reply closes the connection, since the body may still be on its way; `hang_up`
    closes it at once rather than letting aiohttp read on (the client has stalled).
    """

    def __init__(self, code: int, message: str, *, hang_up: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hang_up = hang_up


_VERTEX_PATH = "/publishers/google/models/"
"""What Vertex AI's model paths hold and Gemini's do not."""
_GENERATE_KINDS = {
    "generateContent": "generate",
    "streamGenerateContent": "stream",
    "countTokens": "count_tokens",
}
"""A model route's methods that generate (or count), with their kind in the request log."""

_REQUEST_ID = "agentrt_request_id"
"""The request-id header (name, value) an OpenAI or Anthropic reply carries."""
_OPENAI = OpenAIWire()
_ANTHROPIC = AnthropicWire()


def _wire_of(request: web.Request) -> Wire | None:
    """The wire format a `/v1/models` request speaks: Anthropic's SDK sends
    `anthropic-version`, OpenAI's a bearer token alone; Gemini's neither."""
    if not request.path.startswith("/v1/"):
        return None
    if "anthropic-version" in request.headers or "x-api-key" in request.headers:
        return _ANTHROPIC
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        return _OPENAI
    return None


def _fault_outcome(status: int) -> str:
    return "error" if status >= 400 else "garbage"


def _sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\r\n\r\n"


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


class ServerState:
    """Everything the handlers share: engine, token, limits, request log and fault queue."""

    def __init__(self, engine: Engine, token: str, limits: ServerLimits) -> None:
        self.engine = engine
        self.token = token
        self.limits = limits
        self.log = RequestLog(limits)
        self.faults = FaultQueue()
        self.rate_limit: RateLimit | None = None
        self.batches = BatchService(self.batch_item)
        self.openai_batches_service = OpenAIBatchService(
            self.openai_batch_item, lambda: self.batches.delay
        )
        self.message_batches_service = MessageBatchService(
            self.message_batch_item, lambda: self.batches.delay
        )
        self._batch_items = 0

    def key_ok(self, request: web.Request) -> bool:
        """The token as Gemini's API key; on Vertex AI's paths also as the OAuth bearer
        token google-genai sends with credentials (project/location mode)."""
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
        if not key and _VERTEX_PATH in request.path:
            return bearer_or_key_ok(request, self.token)
        return secrets.compare_digest(key.encode(), self.token.encode())

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body, within `max_body_bytes` and `body_timeout`; _Refusal if not."""
        limit = self.limits.max_body_bytes
        too_large = f"Request payload size exceeds the limit: {limit} bytes."
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _Refusal(413, too_large)
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                return await request.read()
        except TimeoutError:
            message = f"The request body did not arrive within {self.limits.body_timeout:g}s."
            raise _Refusal(408, message, hang_up=True) from None
        except web.HTTPRequestEntityTooLarge:
            raise _Refusal(413, too_large) from None

    # Model routes

    async def model_route(self, request: web.Request) -> web.StreamResponse:
        target = request.match_info["target"]
        model, _, method = target.partition(":")
        if REDIRECT_MARKER in request.query:
            return self._redirect_again(request, model)
        if request.method == "GET" and not method:
            wire = _wire_of(request)
            if wire is not None:
                return await self._wire_models(request, wire, model)
            return await self._call(request, "model", model)
        if request.method == "POST" and method == "batchGenerateContent":
            return await self._service(
                request,
                "batch_create",
                model,
                lambda raw: _json(self.batches.create(model, _parse_json(raw), _base(request))),
            )
        if request.method == "POST" and method in ("embedContent", "batchEmbedContents"):
            return await self.gemini_embed(request, model, single=method == "embedContent")
        return await self._generate_route(request, model, method)

    async def vertex_model_route(self, request: web.Request) -> web.StreamResponse:
        """Vertex AI's publisher-model paths: generate, stream and count tokens, as on
        Gemini's routes (the request log records the path's project and location)."""
        model, _, method = request.match_info["target"].partition(":")
        return await self._generate_route(request, model, method)

    async def _generate_route(
        self, request: web.Request, model: str, method: str
    ) -> web.StreamResponse:
        if request.method != "POST" or method not in _GENERATE_KINDS:
            return _json(error_body(404, f"Method {method!r} is not found."), 404)
        return await self._call(request, _GENERATE_KINDS[method], model)

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        wire = _wire_of(request)
        if wire is not None:
            return await self._wire_models(request, wire, "")
        return await self._call(request, "model", "")

    async def _call(self, request: web.Request, kind: str, model: str) -> web.StreamResponse:
        record = self.log.start(request, kind, model)
        if _VERTEX_PATH in request.path:
            record["project"] = request.match_info.get("project")
            record["location"] = request.match_info.get("location")
        return await self._answered(
            request, record, None, self._gemini_answer(request, record, kind, model)
        )

    async def _gemini_answer(
        self, request: web.Request, record: Record, kind: str, model: str
    ) -> web.StreamResponse:
        if not self.key_ok(request):
            raise _Refusal(400, API_KEY_ERROR)
        record["api_key_ok"] = True
        if kind == "model":
            data = self._model_info(model) if model else self._model_list()
            self.log.finish(record, "complete", 200)
            return _json(data)
        raw = await self.read_body(request)
        body = _parse_json(raw)
        greq = to_generate_request(model, body, stream=kind == "stream")
        self.log.keep_body(record, raw, body)
        del raw, body  # a long or hung stream must not hold on to them
        if kind == "count_tokens":
            total = await self.engine.count_tokens(greq)
            self.log.finish(record, "complete", 200)
            return _json({"totalTokens": total})
        fault = self._fault_for(greq)
        record["fault"] = fault.spec if fault else None
        return await self._generate(request, record, greq, fault)

    async def _answered(
        self,
        request: web.Request,
        record: Record,
        wire: Wire | None,
        answer: Awaitable[web.StreamResponse],
    ) -> web.StreamResponse:
        """`answer`, with what goes wrong while answering made the log's outcome and an
        error reply in the request's format (Gemini's when `wire` is None): one ladder for
        every generate route."""
        try:
            return await answer
        except _Refusal as refusal:
            return await self._refuse(request, record, refusal, wire)
        except EngineError as exc:
            self.log.finish(record, "error", exc.code)
            return self._error(wire, exc.code, exc.message, exc.status)
        except asyncio.CancelledError:
            self.log.finish(record, "client_closed")
            raise
        except ConnectionError:
            self.log.finish(record, "client_closed")
            return web.Response(status=499)
        except Exception:
            logger.exception("request %s failed", record["id"])
            self.log.finish(record, "error", 500)
            return self._error(wire, 500)

    def _error(
        self, wire: Wire | None, code: int, message: str | None = None, status: str | None = None
    ) -> web.Response:
        """An error reply in the wire's format, or Gemini's (with its `status` name)."""
        if wire is None:
            return _json(error_body(code, message, status=status), code)
        return self._response(wire.error_reply(code, message or None))

    async def _refuse(
        self, request: web.Request, record: Record, refusal: _Refusal, wire: Wire | None = None
    ) -> web.StreamResponse:
        self.log.finish(record, "rejected", refusal.code)
        response = self._error(wire, refusal.code, refusal.message)
        response.force_close()
        if refusal.hang_up:
            await response.prepare(request)
            await response.write_eof()
            if request.transport is not None:
                request.transport.close()
        return response

    def _fault_for(self, greq: GenerateRequest) -> Fault | None:
        """The fault the request asks its engine for, else the first matching queued one."""
        spec = self.engine.requested_fault(greq)
        if spec is not None:
            try:
                return parse_fault(spec)
            except ValueError as exc:
                raise EngineError(400, str(exc)) from exc
        queued = self.faults.take(prompt_message(greq.contents)[0])
        if queued is None and self.rate_limit is not None:
            return self.rate_limit.take()
        return queued

    def _model_info(self, model: str) -> dict[str, Any]:
        return {
            "name": f"models/{model}",
            "version": "001",
            "displayName": model,
            "description": f"Served locally by the agentrt {self.engine.name} engine.",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": [
                "generateContent",
                "streamGenerateContent",
                "countTokens",
            ],
            "thinking": True,
        }

    def _model_list(self) -> dict[str, Any]:
        return {"models": [self._model_info(m) for m in KNOWN_MODELS]}

    # Generation, with the fault plan applied at its three points

    async def _generate(
        self,
        request: web.Request,
        record: Record,
        greq: GenerateRequest,
        fault: Fault | None,
    ) -> web.StreamResponse:
        plan = fault.plan(greq.model, stream=greq.stream) if fault else NO_FAULT
        if plan.before_headers is not None:
            return await self._before_headers(request, record, greq, plan.before_headers)
        chunks = self._chunks(greq, plan)
        response_id = f"agentrt-{record['id']}"
        if greq.stream:
            return await self._stream(request, record, greq, plan, chunks, response_id)
        collected = [chunk async for chunk in chunks]
        merged = merge_chunks(collected, greq.model, response_id)
        after = plan.after_chunks
        if after is None:
            self.log.finish(record, "complete", 200)
            return _json(merged)
        if isinstance(after, Truncate):
            return self._reply(record, Reply(200, _half(_compact(merged))))
        if isinstance(after, Event):
            return self._reply(record, Reply(after.status, after.payload))
        return await self._strike(request, record, after)

    async def _chunks(self, greq: GenerateRequest, plan: FaultPlan) -> AsyncIterator[EngineChunk]:
        """The engine's chunks (or `tiny` ones), paced and cut short as the plan says."""
        if plan.stop_after == 0:
            return
        if plan.tiny is not None:
            source: AsyncIterator[EngineChunk] = _aiter(
                tiny_chunks(await self.engine.count_tokens(greq), plan.tiny)
            )
        else:
            source = self.engine.generate(greq)
        sent = 0
        async for chunk in source:
            if plan.chunk_delay:
                await asyncio.sleep(plan.chunk_delay)
            yield chunk
            sent += 1
            if sent == plan.stop_after:
                return

    async def _before_headers(
        self, request: web.Request, record: Record, greq: GenerateRequest, action: BeforeHeaders
    ) -> web.StreamResponse:
        if isinstance(action, Reply):
            return self._reply(record, action)
        if isinstance(action, Redirect):
            self.log.finish(record, "redirected", action.status)
            return _redirect(request, action.status)
        if isinstance(action, Drop) or not action.after_headers:
            return await self._strike(request, record, action)
        headers = _SSE_HEADERS if greq.stream else {"Content-Type": "application/json"}
        response = web.StreamResponse(status=200, headers=headers)
        record["status"] = 200
        await response.prepare(request)
        await _forever()

    async def _stream(
        self,
        request: web.Request,
        record: Record,
        greq: GenerateRequest,
        plan: FaultPlan,
        chunks: AsyncIterator[EngineChunk],
        response_id: str,
    ) -> web.StreamResponse:
        encoder = ChunkEncoder(greq.model, response_id)
        after = plan.after_chunks
        # Wait for the first chunk before the headers: an EngineError is still an HTTP error.
        pending = await anext(chunks, None)
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        record["status"] = 200
        await response.prepare(request)
        if isinstance(after, Truncate):
            if pending is not None:
                await response.write(_sse_event(_half(encoder.encode(pending).encode())))
            self.log.finish(record, "garbage")
            await response.write_eof()
            return response
        sent = 0
        try:
            while pending is not None:
                await response.write(_sse_event(encoder.encode(pending).encode()))
                sent += 1
                record["chunks_sent"] = sent
                pending = await anext(chunks, None)
        except EngineError as exc:
            body = error_body(exc.code, exc.message, status=exc.status)
            await response.write(_sse_event(json.dumps(body).encode()))
            self.log.finish(record, "error")
            await response.write_eof()
            return response
        if isinstance(after, Drop | Hang):
            return await self._strike(request, record, after)
        outcome = "complete"
        if isinstance(after, Event):
            await response.write(_sse_event(after.payload))
            outcome = _fault_outcome(after.status)
        await response.write_eof()
        self.log.finish(record, outcome)
        return response

    def _reply(self, record: Record, reply: Reply) -> web.Response:
        self.log.finish(record, _fault_outcome(reply.status), reply.status)
        return self._response(reply)

    @staticmethod
    def _response(reply: Reply) -> web.Response:
        return web.Response(
            body=reply.body,
            status=reply.status,
            content_type=reply.content_type,
            headers=dict(reply.headers),
        )

    async def _strike(
        self, request: web.Request, record: Record, action: Drop | Hang
    ) -> web.StreamResponse:
        if isinstance(action, Hang):
            await _forever()
        return self._drop(request, record)

    def _drop(self, request: web.Request, record: Record) -> web.StreamResponse:
        """Close the connection once what was written so far is flushed.

        The response returned is never sent: aiohttp's write to the closing transport
        fails with ConnectionError, which it treats as a client disconnect.
        """
        self.log.finish(record, "dropped")
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=502)

    def _redirect_again(self, request: web.Request, model: str) -> web.StreamResponse:
        """A request that followed a `redirect` fault: log it and redirect it once more."""
        record = self.log.start(request, "redirect", model)
        record["api_key_ok"] = self.key_ok(request)
        marked = request.query[REDIRECT_MARKER]
        status = int(marked) if marked.isdigit() and int(marked) in REDIRECT_CODES else 302
        record["fault"] = f"redirect {status}"
        self.log.finish(record, "redirected", status)
        response = _redirect(request, status)
        response.force_close()
        return response

    # OpenAI and Anthropic routes (wire/), through the same fault plan and request log

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._wire_call(request, _OPENAI)

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._wire_call(request, _ANTHROPIC)

    async def _wire_models(self, request: web.Request, wire: Wire, model: str) -> web.Response:
        record = self.log.start(request, "model", model)
        if not wire.key_ok(request, self.token):
            self.log.finish(record, "rejected", 401)
            return self._response(wire.error_reply(401))
        record["api_key_ok"] = True
        self.log.finish(record, "complete", 200)
        return _json(wire.model(model) if model else wire.models())

    async def _wire_call(self, request: web.Request, wire: Wire) -> web.StreamResponse:
        if REDIRECT_MARKER in request.query:
            return self._redirect_again(request, "")
        record = self.log.start(request, "generate", "")
        request[_REQUEST_ID] = (wire.request_id_header, f"req_agentrt_{record['id']}")
        return await self._answered(request, record, wire, self._wire_answer(request, record, wire))

    async def _wire_answer(
        self, request: web.Request, record: Record, wire: Wire
    ) -> web.StreamResponse:
        if not wire.key_ok(request, self.token):
            raise _Refusal(401, "")
        record["api_key_ok"] = True
        raw = await self.read_body(request)
        body = _parse_json(raw)
        greq, options = wire.to_request(body)
        record["model"] = greq.model
        record["kind"] = "stream" if greq.stream else "generate"
        self.log.keep_body(record, raw, body)
        del raw, body  # a long or hung stream must not hold on to them
        fault = self._fault_for(greq)
        record["fault"] = fault.spec if fault else None
        return await self._wire_generate(request, record, wire, greq, options, fault)

    async def _wire_generate(
        self,
        request: web.Request,
        record: Record,
        wire: Wire,
        greq: GenerateRequest,
        options: dict[str, Any],
        fault: Fault | None,
    ) -> web.StreamResponse:
        plan = fault.plan(greq.model, stream=greq.stream) if fault else NO_FAULT
        if fault is not None and fault.kind == "http_error":
            return self._reply(record, wire.fault_reply(fault, greq.model))
        if fault is not None and fault.kind == "no_usage":
            options = {**options, "include_usage": False}
        if plan.before_headers is not None:
            return await self._before_headers(request, record, greq, plan.before_headers)
        chunks = self._chunks(greq, plan)
        response_id = f"agentrt-{record['id']}"
        if greq.stream:
            return await self._wire_stream(request, record, wire, greq, options, plan, chunks)
        collected = [chunk async for chunk in chunks]
        merged = wire.merge(collected, greq, response_id)
        after = plan.after_chunks
        if after is None:
            self.log.finish(record, "complete", 200)
            return _json(merged)
        if isinstance(after, Truncate):
            return self._reply(record, Reply(200, _half(_compact(merged))))
        if isinstance(after, Event):
            garbage = Reply(after.status, after.payload)
            return self._reply(
                record, wire.error_reply(after.status) if after.status >= 400 else garbage
            )
        return await self._strike(request, record, after)

    async def _wire_stream(
        self,
        request: web.Request,
        record: Record,
        wire: Wire,
        greq: GenerateRequest,
        options: dict[str, Any],
        plan: FaultPlan,
        chunks: AsyncIterator[EngineChunk],
    ) -> web.StreamResponse:
        stream = wire.stream(greq, f"agentrt-{record['id']}", options)
        after = plan.after_chunks
        # Wait for the first chunk before the headers: an EngineError is still an HTTP error.
        pending = await anext(chunks, None)
        if pending is not None:
            input_tokens = pending.usage.get("promptTokenCount", 0)
        else:
            input_tokens = await self.engine.count_tokens(greq)
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        record["status"] = 200
        await response.prepare(request)
        opening = stream.open(input_tokens)
        if isinstance(after, Truncate):
            # The first event's JSON cut in half, still framed as an event.
            await response.write(_half(opening.rstrip(b"\n")) + b"\n\n")
            self.log.finish(record, "garbage")
            await response.write_eof()
            return response
        await response.write(opening)
        sent = 0
        try:
            while pending is not None:
                await response.write(stream.chunk(pending))
                sent += 1
                record["chunks_sent"] = sent
                pending = await anext(chunks, None)
        except EngineError as exc:
            await response.write(stream.error(exc.code, exc.message))
            self.log.finish(record, "error")
            await response.write_eof()
            return response
        if isinstance(after, Drop | Hang):
            return await self._strike(request, record, after)
        if isinstance(after, Event):
            error = after.status >= 400
            await response.write(
                stream.error(after.status) if error else stream.garbage(after.payload)
            )
            self.log.finish(record, "error" if error else "garbage")
        else:
            await response.write(stream.close())
            self.log.finish(record, "complete")
        await response.write_eof()
        return response

    # Embedding routes (wire/embeddings.py)

    async def gemini_embed(
        self, request: web.Request, model: str, *, single: bool
    ) -> web.StreamResponse:
        record = self.log.start(request, "embed", model)
        try:
            if not self.key_ok(request):
                raise _Refusal(400, API_KEY_ERROR)
            record["api_key_ok"] = True
            raw = await self.read_body(request)
            body = _parse_json(raw)
            self.log.keep_body(record, raw, body)
            asked = embeddings.gemini_single(body) if single else embeddings.gemini_batch(body)
            fault = self.faults.take("\n".join(asked.texts))
            plan = fault.plan(model, stream=False) if fault else NO_FAULT
            if plan.before_headers is not None:  # a status, a drop, a hang; no stream to cut
                record["fault"] = fault.spec if fault else None
                target = GenerateRequest(model, [], stream=False)
                return await self._before_headers(request, record, target, plan.before_headers)
            embedded = await self._embed(asked)
        except _Refusal as refusal:
            return await self._refuse(request, record, refusal)
        except EngineError as exc:
            self.log.finish(record, "error", exc.code)
            return _json(error_body(exc.code, exc.message, status=exc.status), exc.code)
        self.log.finish(record, "complete", 200)
        return _json(embeddings.gemini_reply(embedded.vectors, single=single))

    async def openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        record = self.log.start(request, "embed", "")
        if not _OPENAI.key_ok(request, self.token):
            self.log.finish(record, "rejected", 401)
            return self._response(_OPENAI.error_reply(401))
        record["api_key_ok"] = True
        try:
            raw = await self.read_body(request)
            body = _parse_json(raw)
            self.log.keep_body(record, raw, body)
            model, asked = embeddings.openai_request(body)
            record["model"] = model
            embedded = await self._embed(asked)
        except _Refusal as refusal:
            return await self._refuse(request, record, refusal, _OPENAI)
        except EngineError as exc:
            self.log.finish(record, "error", exc.code)
            return self._response(_OPENAI.error_reply(exc.code, exc.message))
        self.log.finish(record, "complete", 200)
        reply = embeddings.openai_reply(
            model, embedded.vectors, embedded.tokens, as_base64=asked.base64
        )
        return _json(reply)

    async def _embed(self, asked: embeddings.EmbedRequest) -> Embedded:
        embed = getattr(self.engine, "embed", None)
        if embed is None:
            raise EngineError(400, f"the {self.engine.name} engine does not embed")
        embedded: Embedded = await embed(asked.texts, asked.dimensions)
        return embedded

    # Batch and Files API routes (batches.py)

    async def batch_item(self, model: str, body: Any) -> dict[str, Any]:
        """One request of a batch job: its response JSON, or EngineError for its error entry.

        A fault the prompt asks for applies when it is an HTTP error (`@@fault 500`); other
        kinds, and queued faults, do not apply to batch requests."""
        greq = to_generate_request(model, body, stream=False)
        self._batch_fault(greq)
        self._batch_items += 1
        chunks = [chunk async for chunk in self.engine.generate(greq)]
        return merge_chunks(chunks, greq.model, f"agentrt-batch-{self._batch_items}")

    async def message_batch_item(self, params: Any) -> dict[str, Any]:
        """One request of an Anthropic message batch: the message JSON, or EngineError."""
        greq, _ = _ANTHROPIC.to_request(params)
        greq = dataclasses.replace(greq, stream=False)
        self._batch_fault(greq)
        self._batch_items += 1
        chunks = [chunk async for chunk in self.engine.generate(greq)]
        return _ANTHROPIC.merge(chunks, greq, f"agentrt-batch-{self._batch_items}")

    async def openai_batch_item(self, body: Any) -> dict[str, Any]:
        """One request of an OpenAI batch: the chat completion JSON, or EngineError."""
        greq, _ = _OPENAI.to_request(body)
        greq = dataclasses.replace(greq, stream=False)
        self._batch_fault(greq)
        self._batch_items += 1
        chunks = [chunk async for chunk in self.engine.generate(greq)]
        return _OPENAI.merge(chunks, greq, f"agentrt-batch-{self._batch_items}")

    def _batch_fault(self, greq: GenerateRequest) -> None:
        """EngineError if the prompt asks for an HTTP error fault (`@@fault 500`)."""
        spec = self.engine.requested_fault(greq)
        if spec is not None:
            try:
                fault = parse_fault(spec)
            except ValueError as exc:
                raise EngineError(400, str(exc)) from exc
            action = fault.plan(greq.model, stream=False).before_headers
            if isinstance(action, Reply) and action.status >= 400:
                error = _parse_json(action.body)
                entry = error.get("error") if isinstance(error, dict) else None
                message = entry.get("message") if isinstance(entry, dict) else None
                raise EngineError(
                    action.status,
                    str(message or f"Injected fault: HTTP {action.status}."),
                    status=STATUS_NAMES.get(action.status, "UNKNOWN"),
                )

    async def batch_list(self, request: web.Request) -> web.StreamResponse:
        if _wire_of(request) is _OPENAI:
            return await self.openai_batches(request)

        def answer(raw: bytes) -> web.Response:
            size = _int_query(request, "pageSize", 0)
            token = request.query.get("pageToken")
            return _json(self.batches.list(size, token, _base(request)))

        return await self._service(request, "batch_list", "", answer)

    async def batch_route(self, request: web.Request) -> web.StreamResponse:
        if _wire_of(request) is _OPENAI:
            return await self.openai_batches(request)
        job_id, _, method = request.match_info["target"].partition(":")
        batches = self.batches
        calls: dict[tuple[str, str], tuple[str, Callable[[], dict[str, Any]]]] = {
            ("GET", ""): ("batch_get", lambda: batches.get(job_id, _base(request))),
            ("POST", "cancel"): ("batch_cancel", lambda: batches.cancel(job_id)),
            ("DELETE", ""): ("batch_delete", lambda: batches.delete(job_id)),
        }
        found = calls.get((request.method, method))
        if found is None:
            return _json(error_body(404, f"Method {method!r} is not found."), 404)
        kind, call = found
        return await self._service(request, kind, "", lambda raw: _json(call()))

    async def file_route(self, request: web.Request) -> web.StreamResponse:
        if _wire_of(request) is _OPENAI:
            return await self.openai_batches(request)
        file_id, _, method = request.match_info["target"].partition(":")
        if request.method == "GET" and method == "download":

            def download(raw: bytes) -> web.Response:
                data = self.batches.download(file_id)
                return web.Response(body=data, content_type="application/octet-stream")

            return await self._service(request, "file_download", "", download)
        batches = self.batches
        calls: dict[tuple[str, str], tuple[str, Callable[[], dict[str, Any]]]] = {
            ("GET", ""): ("file_get", lambda: batches.file(file_id, _base(request))),
            ("DELETE", ""): ("file_delete", lambda: batches.delete_file(file_id)),
        }
        found = calls.get((request.method, method))
        if found is None:
            return _json(error_body(404, f"Method {method!r} is not found."), 404)
        kind, call = found
        return await self._service(request, kind, "", lambda raw: _json(call()))

    async def file_upload(self, request: web.Request) -> web.StreamResponse:
        """A resumable upload: `start` (needs the API key) or a chunk (the upload id is its
        credential, as the SDK sends chunks without the key)."""
        upload_id = request.query.get("upload_id")
        headers = {name.lower(): value for name, value in request.headers.items()}
        if upload_id is None:

            def start(raw: bytes) -> web.Response:
                url = self.batches.start_upload(_parse_json(raw), headers, _base(request))
                response = _json({})
                response.headers.update(
                    {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"}
                )
                return response

            return await self._service(request, "file_create", "", start)

        def chunk(raw: bytes) -> web.Response:
            status, body = self.batches.upload_chunk(
                upload_id,
                headers.get("x-goog-upload-command", ""),
                headers.get("x-goog-upload-offset", ""),
                raw,
                _base(request),
            )
            response = _json(body)
            response.headers["X-Goog-Upload-Status"] = status
            return response

        return await self._service(request, "file_upload", "", chunk, needs_key=False)

    async def _service(
        self,
        request: web.Request,
        kind: str,
        model: str,
        answer: Callable[[bytes], web.Response],
        *,
        needs_key: bool = True,
        wire: Wire | None = None,
    ) -> web.StreamResponse:
        """A logged Batch/Files API call: key check, body read within the limits, answer;
        errors in `wire`'s format (Gemini's by default)."""
        record = self.log.start(request, kind, model)
        try:
            key_ok = wire.key_ok(request, self.token) if wire else self.key_ok(request)
            if needs_key and not key_ok:
                raise _Refusal(401 if wire else 400, "" if wire else API_KEY_ERROR)
            record["api_key_ok"] = key_ok
            raw = await self.read_body(request) if request.can_read_body else b""
            if raw:
                self.log.keep_body(record, raw, _parse_json(raw))
            response = answer(raw)
            self.log.finish(record, "complete", response.status)
            return response
        except _Refusal as refusal:
            return await self._refuse(request, record, refusal, wire)
        except EngineError as exc:
            self.log.finish(record, "error", exc.code)
            if wire is not None:
                return self._response(wire.error_reply(exc.code, exc.message))
            return _json(error_body(exc.code, exc.message, status=exc.status), exc.code)
        except web.HTTPException:
            self.log.finish(record, "error", 400)
            raise
        except ConnectionError:
            self.log.finish(record, "client_closed")
            return web.Response(status=499)
        except Exception:
            logger.exception("request %s failed", record["id"])
            self.log.finish(record, "error", 500)
            return _json(error_body(500), 500)

    async def message_batches(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's Message Batches API (`wire/message_batches.py`)."""
        batch_id = request.match_info.get("id", "")
        action = request.match_info.get("action", "")
        service = self.message_batches_service
        base = _base(request)
        calls: dict[tuple[str, str, str], tuple[str, Callable[[bytes], web.Response]]] = {
            ("POST", "", ""): (
                "batch_create",
                lambda raw: _json(service.create(_parse_json(raw), base)),
            ),
            ("GET", "", ""): ("batch_list", lambda raw: _json(service.list(base))),
            ("GET", "id", ""): ("batch_get", lambda raw: _json(service.get(batch_id, base))),
            ("POST", "id", "cancel"): (
                "batch_cancel",
                lambda raw: _json(service.cancel(batch_id, base)),
            ),
            ("DELETE", "id", ""): ("batch_delete", lambda raw: _json(service.delete(batch_id))),
            ("GET", "id", "results"): (
                "batch_results",
                lambda raw: web.Response(
                    body=service.results(batch_id), content_type="application/x-jsonl"
                ),
            ),
        }
        found = calls.get((request.method, "id" if batch_id else "", action))
        if found is None:
            reply = _ANTHROPIC.error_reply(404, f"{request.method} {request.path} not found.")
            return self._response(reply)
        kind, answer = found
        return await self._service(request, kind, "", answer, wire=_ANTHROPIC)

    async def openai_batches(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's Files and Batch APIs (`wire/openai_batches.py`): `/v1/{files|batches}
        [/{id}[/{action}]]`."""
        _, collection, *rest = request.path.strip("/").split("/")
        item = rest[0] if rest else ""
        action = rest[1] if len(rest) > 1 else ""
        service = self.openai_batches_service
        content_type = request.headers.get("Content-Type", "")

        def download(raw: bytes) -> web.Response:
            return web.Response(body=service.content(item), content_type="application/octet-stream")

        calls: dict[tuple[str, str, str, str], tuple[str, Callable[[bytes], web.Response]]] = {
            ("POST", "files", "", ""): (
                "file_create",
                lambda raw: _json(service.create_file(content_type, raw)),
            ),
            ("GET", "files", "id", ""): ("file_get", lambda raw: _json(service.file(item))),
            ("GET", "files", "id", "content"): ("file_download", download),
            ("DELETE", "files", "id", ""): (
                "file_delete",
                lambda raw: _json(service.delete_file(item)),
            ),
            ("POST", "batches", "", ""): (
                "batch_create",
                lambda raw: _json(service.create(_parse_json(raw))),
            ),
            ("GET", "batches", "", ""): ("batch_list", lambda raw: _json(service.list())),
            ("GET", "batches", "id", ""): ("batch_get", lambda raw: _json(service.get(item))),
            ("POST", "batches", "id", "cancel"): (
                "batch_cancel",
                lambda raw: _json(service.cancel(item)),
            ),
        }
        found = calls.get((request.method, collection, "id" if item else "", action))
        if found is None:
            reply = _OPENAI.error_reply(404, f"Invalid URL ({request.method} {request.path})")
            return self._response(reply)
        kind, answer = found
        return await self._service(request, kind, "", answer, wire=_OPENAI)

    # Control routes

    @web.middleware
    async def control_auth(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        if request.path.startswith("/_agentrt/"):
            token = request.headers.get("x-agentrt-token", "")
            if not secrets.compare_digest(token.encode(), self.token.encode()):
                return _json({"error": "bad or missing x-agentrt-token"}, 401)
        response: web.StreamResponse = await handler(request)
        return response

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "engine": self.engine.name, "tcp_nodelay": _tcp_nodelay(request)})

    async def list_requests(self, request: web.Request) -> web.Response:
        return _json({"requests": self.log.since(_int_query(request, "since", 0))})

    async def last_request(self, request: web.Request) -> web.Response:
        record = self.log.last()
        if record is None:
            return _json({"error": "no requests logged"}, 404)
        return _json(record)

    async def wait_request(self, request: web.Request) -> web.Response:
        try:
            record_id = int(request.match_info["id"])
        except ValueError:
            return _json({"error": "id must be an integer"}, 400)
        timeout = _float_query(request, "timeout", 10.0)

        def finished() -> bool:
            record = self.log.get(record_id)
            return self.log.is_forgotten(record_id) or (
                record is not None and record["outcome"] is not None
            )

        if not await self._wait(finished, timeout):
            return _json({"error": f"request {record_id} not finished in {timeout}s"}, 408)
        record = self.log.get(record_id)
        if record is None:
            return _json({"error": f"request {record_id} was cleared or evicted"}, 404)
        return _json(record)

    async def wait_count(self, request: web.Request) -> web.Response:
        """Wait until `n` requests were logged since the last clear; answer the kept ones."""
        n = _int_query(request, "n", 1)
        timeout = _float_query(request, "timeout", 10.0)
        if not await self._wait(lambda: self.log.started_since_clear >= n, timeout):
            return _json({"error": f"fewer than {n} requests in {timeout}s"}, 408)
        return _json({"requests": self.log.since(0)})

    async def wait_tagged(self, request: web.Request) -> web.Response:
        """Wait until a kept request's body holds `tag`; answer the first such request.

        A request is logged when its headers arrive and its body is kept once read, so a
        wait by count alone can see the request before what it sent."""
        tag = request.query.get("tag", "")
        timeout = _float_query(request, "timeout", 10.0)
        if not tag:
            return _json({"error": "tag is required"}, 400)
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            found[:] = [r for r in self.log.since(0) if tag in json.dumps(r.get("body"))]
            return bool(found)

        if not await self._wait(ready, timeout):
            return _json({"error": f"no request with {tag!r} in {timeout}s"}, 408)
        return _json(found[0])

    async def _wait(self, ready: Callable[[], bool], seconds: float) -> bool:
        """Whether `ready()` holds within `seconds` (checked as the log changes)."""
        try:
            async with asyncio.timeout(seconds):
                await self.log.wait_until(ready)
        except TimeoutError:
            return ready()
        return True

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.log.clear()
        return _json({"ok": True})

    async def push_faults(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await self.read_body(request))
            specs = body["faults"]
            match = body.get("match")
            if not isinstance(specs, list) or not (match is None or isinstance(match, str)):
                raise TypeError
            faults = [parse_fault(str(spec)) for spec in specs]
        except _Refusal as refusal:
            response = _json({"error": refusal.message}, refusal.code)
            response.force_close()
            return response
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        except (KeyError, TypeError, AttributeError):
            return _json({"error": 'expected {"faults": [SPEC, ...], "match": str|null}'}, 400)
        self.faults.push(faults, match)
        return _json({"ok": True, "queued": len(self.faults)})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return _json({"ok": True})

    async def rate_limit_settings(self, request: web.Request) -> web.Response:
        """`{"per_second": N}` limits the generate requests to N a second; null: no limit."""
        try:
            body = json.loads(await self.read_body(request))
            per_second = body["per_second"] if isinstance(body, dict) else "?"
            self.rate_limit = None if per_second is None else RateLimit(float(per_second))
        except _Refusal as refusal:
            return _json({"error": refusal.message}, refusal.code)
        except (ValueError, KeyError, TypeError):
            return _json({"error": 'expected {"per_second": N or null}, N > 0'}, 400)
        return _json({"ok": True, "per_second": per_second})

    async def batch_settings(self, request: web.Request) -> web.Response:
        """`{"delay": SECONDS}`: how long the batch jobs created from now on take."""
        try:
            body = json.loads(await self.read_body(request))
            self.batches.set_delay(body["delay"] if isinstance(body, dict) else None)
        except _Refusal as refusal:
            return _json({"error": refusal.message}, refusal.code)
        except EngineError as exc:
            return _json({"error": exc.message}, 400)
        except (ValueError, KeyError):
            return _json({"error": 'expected {"delay": SECONDS}'}, 400)
        return _json({"ok": True, "delay": self.batches.delay})


def create_app(engine: Engine, token: str, limits: ServerLimits | None = None) -> web.Application:
    """The web app serving `engine`; `token` is both the API key and the control token.

    `limits` bound what a client can make it read and keep (the header timeout needs the
    connections `connections.listen` makes; the rest hold however the app is served).
    """
    limits = limits or ServerLimits()
    state = ServerState(engine, token, limits)
    app = web.Application(
        middlewares=[track_requests, state.control_auth], client_max_size=limits.max_body_bytes
    )
    for version in ("v1", "v1beta"):
        app.router.add_get(f"/{version}/models", state.list_models)
        app.router.add_route("*", f"/{version}/models/{{target}}", state.model_route)
        app.router.add_get(f"/{version}/batches", state.batch_list)
        app.router.add_route("*", f"/{version}/batches/{{target}}", state.batch_route)
        app.router.add_route("*", f"/{version}/files/{{target}}", state.file_route)
        app.router.add_post(f"/upload/{version}/files", state.file_upload)
    for version in ("v1", "v1beta1"):
        for place in ("/projects/{project}/locations/{location}", ""):
            path = f"/{version}{place}{_VERTEX_PATH}{{target}}"
            app.router.add_route("*", path, state.vertex_model_route)
    app.router.add_post("/v1/chat/completions", state.openai_chat)
    app.router.add_post("/v1/messages", state.anthropic_messages)
    app.router.add_post("/v1/embeddings", state.openai_embeddings)
    app.router.add_post("/v1/files", state.openai_batches)
    app.router.add_get("/v1/files/{id}/content", state.openai_batches)
    app.router.add_post("/v1/batches", state.openai_batches)
    app.router.add_post("/v1/batches/{id}/cancel", state.openai_batches)
    app.router.add_route("*", "/v1/messages/batches", state.message_batches)
    app.router.add_route("*", "/v1/messages/batches/{id}", state.message_batches)
    app.router.add_route("*", "/v1/messages/batches/{id}/{action}", state.message_batches)
    app.router.add_get("/_agentrt/health", state.health)
    app.router.add_get("/_agentrt/requests", state.list_requests)
    app.router.add_delete("/_agentrt/requests", state.clear_requests)
    app.router.add_get("/_agentrt/requests/last", state.last_request)
    app.router.add_get("/_agentrt/requests/wait_count", state.wait_count)
    app.router.add_get("/_agentrt/requests/wait_tagged", state.wait_tagged)
    app.router.add_get("/_agentrt/requests/{id}/wait", state.wait_request)
    app.router.add_post("/_agentrt/faults", state.push_faults)
    app.router.add_delete("/_agentrt/faults", state.clear_faults)
    app.router.add_post("/_agentrt/batches", state.batch_settings)
    app.router.add_post("/_agentrt/rate_limit", state.rate_limit_settings)

    async def close_batches(app: web.Application) -> None:
        await state.batches.aclose()
        await state.message_batches_service.aclose()
        await state.openai_batches_service.aclose()

    async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
        if _REQUEST_ID in request:
            name, value = request[_REQUEST_ID]
            response.headers[name] = value

    app.on_response_prepare.append(add_request_id)
    app.on_cleanup.append(close_batches)
    return app
