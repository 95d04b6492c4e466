"""The aiohttp app: Gemini REST routes, SSE writing, the request log and control API.

Model routes (`/v1/...` and `/v1beta/...`) need the per-process token as the API key,
as Gemini does. Control routes under `/_agentrt/` need it as `x-agentrt-token`; they
let tests read what arrived, wait for a request to finish and queue faults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from aiohttp import web

from .engines.base import Engine, EngineChunk, EngineError, GenerateRequest
from .engines.scripted import parse_prompt
from .faults import Fault, FaultQueue, error_body, parse_fault, tiny_chunks

logger = logging.getLogger("agentrt_jupyter.server")

API_KEY_ERROR = "API key not valid. Please pass a valid API key."
_MAX_WAIT = 600.0
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
_KNOWN_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro")

Record = dict[str, Any]


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
    candidate["index"] = 0
    response: dict[str, Any] = {"candidates": [candidate]}
    if chunks:
        response["usageMetadata"] = json.loads(_usage_json(chunks[-1].usage))
    response["modelVersion"] = model
    response["responseId"] = response_id
    return response


class RequestLog:
    """Records of model requests, with waiters woken on every start and finish."""

    def __init__(self) -> None:
        self._records: dict[int, Record] = {}
        self._next_id = 1
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self, request: web.Request, kind: str, model: str, body: Any) -> Record:
        record: Record = {
            "id": self._next_id,
            "received": time.time(),
            "method": request.method,
            "path": request.path,
            "model": model,
            "kind": kind,
            "body": body,
            "api_key_ok": False,
            "fault": None,
            "status": 0,
            "chunks_sent": 0,
            "outcome": None,
            "finished": None,
        }
        self._next_id += 1
        self._records[record["id"]] = record
        self._notify()
        return record

    def finish(self, record: Record, outcome: str, status: int | None = None) -> None:
        """Set the outcome once; a later call (e.g. the cancel after a drop) is ignored."""
        if record["outcome"] is not None:
            return
        if status is not None:
            record["status"] = status
        record["outcome"] = outcome
        record["finished"] = time.time()
        self._notify()

    def since(self, after: int) -> list[Record]:
        return [r for i, r in self._records.items() if i > after]

    def last(self) -> Record | None:
        return next(reversed(self._records.values()), None)

    def clear(self) -> None:
        """Forget the records; ids keep increasing so old ids never match new requests."""
        self._records.clear()
        self._notify()

    async def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        async def watch() -> None:
            while not ready():
                await self._changed.wait()

        try:
            await asyncio.wait_for(watch(), timeout)
        except asyncio.TimeoutError:
            return ready()
        return True

    def get(self, record_id: int) -> Record | None:
        return self._records.get(record_id)

    def is_cleared(self, record_id: int) -> bool:
        return record_id < self._next_id and record_id not in self._records

    def __len__(self) -> int:
        return len(self._records)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
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


class ServerState:
    """Everything the handlers share: engine, token, request log and fault queue."""

    def __init__(self, engine: Engine, token: str) -> None:
        self.engine = engine
        self.token = token
        self.log = RequestLog()
        self.faults = FaultQueue()

    def key_ok(self, request: web.Request) -> bool:
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
        return secrets.compare_digest(key.encode(), self.token.encode())

    # Model routes

    async def model_route(self, request: web.Request) -> web.StreamResponse:
        target = request.match_info["target"]
        model, _, method = target.partition(":")
        if request.method == "GET" and not method:
            return await self._call(request, "model", model, None)
        kinds = {
            "generateContent": "generate",
            "streamGenerateContent": "stream",
            "countTokens": "count_tokens",
        }
        if request.method != "POST" or method not in kinds:
            return _json(error_body(404, f"Method {method!r} is not found."), 404)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        return await self._call(request, kinds[method], model, body)

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "model", "", None)

    async def _call(
        self, request: web.Request, kind: str, model: str, body: Any
    ) -> web.StreamResponse:
        record = self.log.start(request, kind, model, body)
        try:
            if not self.key_ok(request):
                self.log.finish(record, "rejected", 400)
                return _json(error_body(400, API_KEY_ERROR), 400)
            record["api_key_ok"] = True
            if kind == "model":
                data = self._model_info(model) if model else self._model_list()
                self.log.finish(record, "complete", 200)
                return _json(data)
            greq = to_generate_request(model, body, stream=kind == "stream")
            if kind == "count_tokens":
                total = await self.engine.count_tokens(greq)
                self.log.finish(record, "complete", 200)
                return _json({"totalTokens": total})
            fault = self._fault_for(greq)
            record["fault"] = fault.spec if fault else None
            return await self._generate(request, record, greq, fault)
        except EngineError as exc:
            self.log.finish(record, "error", exc.code)
            return _json(error_body(exc.code, exc.message, status=exc.status), exc.code)
        except asyncio.CancelledError:
            self.log.finish(record, "client_closed")
            raise
        except ConnectionError:
            self.log.finish(record, "client_closed")
            return web.Response(status=499)
        except Exception:
            logger.exception("request %s failed", record["id"])
            self.log.finish(record, "error", 500)
            return _json(error_body(500), 500)

    def _fault_for(self, greq: GenerateRequest) -> Fault | None:
        """The prompt's `@@fault` if any, else the first matching queued fault."""
        prompt = parse_prompt(greq.contents)
        specs = prompt.values("fault")
        if len(specs) > 1:
            raise EngineError(400, "only one @@fault per request")
        if specs:
            try:
                return parse_fault(specs[0])
            except ValueError as exc:
                raise EngineError(400, str(exc)) from exc
        return self.faults.take(prompt.text)

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
        return {"models": [self._model_info(m) for m in _KNOWN_MODELS]}

    async def _chunks(
        self, greq: GenerateRequest, fault: Fault | None
    ) -> AsyncIterator[EngineChunk]:
        if fault is not None and fault.kind == "tiny":
            prompt_tokens = await self.engine.count_tokens(greq)
            for chunk in tiny_chunks(prompt_tokens, fault.count):
                yield chunk
            return
        async for chunk in self.engine.generate(greq):
            yield chunk

    async def _generate(
        self,
        request: web.Request,
        record: Record,
        greq: GenerateRequest,
        fault: Fault | None,
    ) -> web.StreamResponse:
        kind = fault.kind if fault else None
        if fault is not None and kind == "http_error":
            self.log.finish(record, "error", fault.code)
            return _json(fault.error_body(greq.model), fault.code)
        if kind == "drop_headers":
            return self._drop(request, record)
        if kind == "hang_headers":
            await _forever()
        response_id = f"agentrt-{record['id']}"
        if greq.stream:
            return await self._stream(request, record, greq, fault, response_id)

        if kind == "hang":
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            record["status"] = 200
            await response.prepare(request)
            await _forever()
        stops_after = fault.stops_after if fault else None
        chunks: list[EngineChunk] = []
        async for chunk in self._chunks(greq, fault):
            if stops_after is not None and len(chunks) == stops_after:
                break
            if kind == "slow" and fault is not None:
                await asyncio.sleep(fault.delay)
            chunks.append(chunk)
        if fault is not None and kind == "sse_error":
            self.log.finish(record, "error", fault.code)
            return _json(fault.error_body(greq.model), fault.code)
        if kind == "drop_after":
            return self._drop(request, record)
        if kind == "hang_after":
            await _forever()
        self.log.finish(record, "complete", 200)
        return _json(merge_chunks(chunks, greq.model, response_id))

    async def _stream(
        self,
        request: web.Request,
        record: Record,
        greq: GenerateRequest,
        fault: Fault | None,
        response_id: str,
    ) -> web.StreamResponse:
        kind = fault.kind if fault else None
        delay = fault.delay if fault is not None and kind == "slow" else 0.0
        stops_after = fault.stops_after if fault else None
        encoder = ChunkEncoder(greq.model, response_id)
        chunks = self._chunks(greq, fault).__aiter__()
        first: EngineChunk | None = None
        if kind != "hang" and stops_after != 0:
            # Wait for the first chunk before the headers: an EngineError is still an HTTP error.
            first = await anext(chunks, None)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        record["status"] = 200
        await response.prepare(request)
        if kind == "hang":
            await _forever()
        sent = 0
        try:
            pending = first
            while pending is not None:
                if stops_after is not None and sent >= stops_after:
                    break
                if delay:
                    await asyncio.sleep(delay)
                await response.write(f"data: {encoder.encode(pending)}\r\n\r\n".encode())
                sent += 1
                record["chunks_sent"] = sent
                pending = await anext(chunks, None)
        except EngineError as exc:
            body = error_body(exc.code, exc.message, status=exc.status)
            await response.write(f"data: {json.dumps(body)}\r\n\r\n".encode())
            self.log.finish(record, "error")
            await response.write_eof()
            return response
        if fault is not None and kind == "sse_error":
            event = json.dumps(fault.error_body(greq.model))
            await response.write(f"data: {event}\r\n\r\n".encode())
            self.log.finish(record, "error")
        elif kind == "drop_after":
            return self._drop(request, record)
        elif kind == "hang_after":
            await _forever()
        await response.write_eof()
        self.log.finish(record, "complete")
        return response

    def _drop(self, request: web.Request, record: Record) -> web.StreamResponse:
        """Close the connection once what was written so far is flushed.

        The response returned is never sent: aiohttp's write to the closing transport
        fails with ConnectionError, which it treats as a client disconnect.
        """
        self.log.finish(record, "dropped")
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=502)

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
            return self.log.is_cleared(record_id) or (
                record is not None and record["outcome"] is not None
            )

        if not await self.log.wait_until(finished, timeout):
            return _json({"error": f"request {record_id} not finished in {timeout}s"}, 408)
        record = self.log.get(record_id)
        if record is None:
            return _json({"error": f"request {record_id} was cleared"}, 404)
        return _json(record)

    async def wait_count(self, request: web.Request) -> web.Response:
        n = _int_query(request, "n", 1)
        timeout = _float_query(request, "timeout", 10.0)
        if not await self.log.wait_until(lambda: len(self.log) >= n, timeout):
            return _json({"error": f"fewer than {n} requests in {timeout}s"}, 408)
        return _json({"requests": self.log.since(0)})

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.log.clear()
        return _json({"ok": True})

    async def push_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            specs = body["faults"]
            match = body.get("match")
            if not isinstance(specs, list) or not (match is None or isinstance(match, str)):
                raise TypeError
            faults = [parse_fault(str(spec)) for spec in specs]
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        except (KeyError, TypeError, AttributeError):
            return _json({"error": 'expected {"faults": [SPEC, ...], "match": str|null}'}, 400)
        self.faults.push(faults, match)
        return _json({"ok": True, "queued": len(self.faults)})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return _json({"ok": True})


def create_app(engine: Engine, token: str) -> web.Application:
    """The web app serving `engine`; `token` is both the API key and the control token."""
    state = ServerState(engine, token)
    app = web.Application(middlewares=[state.control_auth], client_max_size=64 * 1024**2)
    for version in ("v1", "v1beta"):
        app.router.add_get(f"/{version}/models", state.list_models)
        app.router.add_route("*", f"/{version}/models/{{target}}", state.model_route)
    app.router.add_get("/_agentrt/health", state.health)
    app.router.add_get("/_agentrt/requests", state.list_requests)
    app.router.add_delete("/_agentrt/requests", state.clear_requests)
    app.router.add_get("/_agentrt/requests/last", state.last_request)
    app.router.add_get("/_agentrt/requests/wait_count", state.wait_count)
    app.router.add_get("/_agentrt/requests/{id}/wait", state.wait_request)
    app.router.add_post("/_agentrt/faults", state.push_faults)
    app.router.add_delete("/_agentrt/faults", state.clear_faults)
    return app
