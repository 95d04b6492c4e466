"""OpenAI's Batch API and the Files API it needs, served from memory.

What `client.files` / `client.batches` call: `POST /v1/files` (multipart `file` and
`purpose`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`;
`POST /v1/batches` (`input_file_id`, `endpoint` `/v1/chat/completions`,
`completion_window`), `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`.

The input file holds one `{"custom_id", "method", "url", "body"}` per line. A batch runs
its requests through the engine in the background as soon as it is created and shows
`in_progress` until its delay (the Gemini Batch API's) has passed and every request is
done, then `completed` with an output file (`{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error": null}` per answered request, in order) and,
if a prompt asked for an HTTP error fault, an error file of those requests' error bodies.
A cancelled batch ends `cancelled`, with the requests answered before the cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from ..engines.base import EngineError
from .openai import error_json

AnswerOne = Callable[[Any], Awaitable[dict[str, Any]]]
"""(chat completion request body) -> the completion JSON; EngineError for a failed one."""
MAX_FILE_BYTES = 256 * 1024 * 1024
_ENDPOINT = "/v1/chat/completions"


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class Batch:
    id: str
    input_file_id: str
    created: float
    delay: float
    requests: list[tuple[str, Any]]
    metadata: Any
    outputs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    processed: bool = False
    finished: float = 0.0
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    task: asyncio.Task[None] | None = None

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "cancelled" if self.processed else "cancelling"
        return "completed" if self.processed and now >= self.created + self.delay else "in_progress"


def parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The form fields of a multipart body: name -> (filename, bytes)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise EngineError(400, "expected a multipart/form-data body")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


class OpenAIBatchService:
    """Files and batches in memory; every method answers JSON or raises EngineError."""

    def __init__(self, answer: AnswerOne, delay: Callable[[], float]) -> None:
        self._answer = answer
        self._delay = delay
        self._files: dict[str, StoredFile] = {}
        self._batches: dict[str, Batch] = {}

    def create_file(self, content_type: str, raw: bytes) -> dict[str, Any]:
        fields = parse_multipart(content_type, raw)
        if "file" not in fields:
            raise EngineError(400, "file: Field required")
        filename, data = fields["file"]
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        return self._store(filename or "upload.jsonl", purpose, data).to_json()

    def _store(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        total = sum(len(f.data) for f in self._files.values()) + len(data)
        if total > MAX_FILE_BYTES:
            raise EngineError(413, f"Files past {MAX_FILE_BYTES} bytes in all are refused.")
        stored = StoredFile(
            f"file-{secrets.token_hex(12)}", filename, purpose, data, int(time.time())
        )
        self._files[stored.id] = stored
        return stored

    def file(self, file_id: str) -> dict[str, Any]:
        return self._file(file_id).to_json()

    def content(self, file_id: str) -> bytes:
        return self._file(file_id).data

    def delete_file(self, file_id: str) -> dict[str, Any]:
        self._file(file_id)
        del self._files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    def _file(self, file_id: str) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise EngineError(404, f"No such File object: {file_id}")
        return stored

    def create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("endpoint") != _ENDPOINT:
            raise EngineError(400, f"endpoint: only {_ENDPOINT} is served here")
        source = self._file(str(body.get("input_file_id")))
        requests: list[tuple[str, Any]] = []
        for number, line in enumerate(source.data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise EngineError(400, f"input file line {number} is not JSON") from None
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                raise EngineError(400, f"input file line {number} needs a custom_id")
            requests.append((item["custom_id"], item.get("body")))
        batch = Batch(
            f"batch_{secrets.token_hex(12)}",
            source.id,
            time.time(),
            self._delay(),
            requests,
            body.get("metadata"),
        )
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        self._batches[batch.id] = batch
        return self._json(batch)

    async def _run(self, batch: Batch) -> None:
        try:
            for number, (custom_id, request) in enumerate(batch.requests, 1):
                if batch.cancelled_at is not None:
                    break
                line_id = f"batch_req_{batch.id[6:]}_{number}"
                try:
                    status, body = 200, await self._answer(request)
                except EngineError as exc:
                    status, body = exc.code, json.loads(error_json(exc.code, exc.message))
                response = {"status_code": status, "request_id": line_id, "body": body}
                line = {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
                (batch.outputs if status == 200 else batch.errors).append(line)
                await asyncio.sleep(0)
            batch.output_file_id = self._lines_file(batch, "output", batch.outputs)
            batch.error_file_id = self._lines_file(batch, "error", batch.errors)
        finally:
            batch.processed = True
            batch.finished = time.time()

    def _lines_file(self, batch: Batch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return self._store(f"{batch.id}_{kind}.jsonl", "batch_output", data).id

    def get(self, batch_id: str) -> dict[str, Any]:
        return self._json(self._batch(batch_id))

    def list(self) -> dict[str, Any]:
        data = [self._json(b) for b in reversed(self._batches.values())]
        first = data[0]["id"] if data else None
        last = data[-1]["id"] if data else None
        return {
            "object": "list",
            "data": data,
            "first_id": first,
            "last_id": last,
            "has_more": False,
        }

    def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self._batch(batch_id)
        if batch.status(time.time()) == "in_progress":
            batch.cancelled_at = time.time()
        return self._json(batch)

    def _batch(self, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise EngineError(404, f"No batch found with id '{batch_id}'.")
        return batch

    def _json(self, batch: Batch) -> dict[str, Any]:
        status = batch.status(time.time())
        done = status in ("completed", "cancelled")
        ended = int(max(batch.finished, batch.created + batch.delay)) if done else None
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": _ENDPOINT,
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id if done else None,
            "error_file_id": batch.error_file_id if done else None,
            "created_at": int(batch.created),
            "in_progress_at": int(batch.created),
            "expires_at": int(batch.created) + 86400,
            "completed_at": ended if status == "completed" else None,
            "cancelling_at": int(batch.cancelled_at) if batch.cancelled_at else None,
            "cancelled_at": ended if status == "cancelled" else None,
            "request_counts": {
                "total": len(batch.requests),
                "completed": len(batch.outputs) if done else 0,
                "failed": len(batch.errors) if done else 0,
            },
            "metadata": batch.metadata,
        }

    async def aclose(self) -> None:
        tasks = [b.task for b in self._batches.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
