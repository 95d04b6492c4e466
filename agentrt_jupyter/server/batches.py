"""The Gemini Batch API, and the Files API it needs, served from memory so batch mode is
tested offline with the real SDK.

What the SDK calls (google-genai `client.aio.batches` / `client.aio.files`):

- `POST /v1beta/models/{model}:batchGenerateContent`: create a job from inline requests
  (`batch.inputConfig.requests.requests[]`, each `{"request": GenerateContentRequest,
  "metadata": {...}}`) or from an uploaded JSONL file (`batch.inputConfig.fileName`, one
  `{"key": ..., "request": GenerateContentRequest}` per line). Answers an Operation.
- `GET /v1beta/batches/{id}`, `GET /v1beta/batches` (pageSize, pageToken),
  `POST /v1beta/batches/{id}:cancel`, `DELETE /v1beta/batches/{id}`.
- `POST /upload/v1beta/files` (resumable upload: a `start` command answers the upload URL
  in `X-Goog-Upload-URL`; chunks go to that URL with `upload` / `upload, finalize`; the
  URL's unguessable `upload_id` is the credential, as at Google), `GET /v1beta/files/{id}`,
  `GET /v1beta/files/{id}:download?alt=media`, `DELETE /v1beta/files/{id}`.

A job runs its requests through the engine in the background as soon as it is created,
and shows PENDING for the first half of its scripted delay, RUNNING until the delay has
passed and every request is done, then SUCCEEDED with the responses in request order:
inline (`metadata.output.inlinedResponses.inlinedResponses[]`, metadata echoed) or as a
generated JSONL file (`metadata.output.responsesFile`, lines `{"key", "response"}` or
`{"key", "error"}`). The delay is `DEFAULT_DELAY` unless the control route
`POST /_agentrt/batches {"delay": SECONDS}` set another one for the jobs created after.
A request whose prompt asks for an HTTP error fault (`@@fault 500`, `@@fault 429 day`)
gets that error as its entry; other fault kinds and queued faults do not apply to batch
requests. Files and jobs live in memory, bounded by `MAX_FILE_BYTES` and `MAX_JOBS`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .engines.base import EngineError

DEFAULT_DELAY = 0.2
"""Seconds a new job takes before it shows SUCCEEDED, unless the control route set another."""
MAX_DELAY = 3600.0
MAX_FILE_BYTES = 256 * 1024 * 1024
"""All uploaded and generated files together; past it an upload gets a 413."""
MAX_JOBS = 1000
"""Jobs kept; the oldest finished ones are forgotten first."""
PAGE_SIZE = 50
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
_TERMINAL = frozenset({"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED"})

GenerateOne = Callable[[str, Any], Awaitable[dict[str, Any]]]
"""(model, GenerateContentRequest body) -> response JSON; raises EngineError for an error."""


def _timestamp(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"


def _error_entry(exc: EngineError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "status": exc.status}


def _model_name(value: object, default: str) -> str:
    if not isinstance(value, str) or not value:
        return default
    return value.removeprefix("models/")


@dataclass
class StoredFile:
    """One file of the Files API: uploaded by a client, or generated as a job's output."""

    id: str
    display_name: str | None
    mime_type: str
    source: str
    created: float
    data: bytearray = field(default_factory=bytearray)
    expected_size: int | None = None
    upload_id: str | None = None
    """Set while the upload is open; cleared when it is finalized."""

    def to_json(self, base_url: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": f"files/{self.id}",
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": _timestamp(self.created),
            "updateTime": _timestamp(self.created),
            "expirationTime": _timestamp(self.created + 48 * 3600),
            "sha256Hash": base64.b64encode(hashlib.sha256(self.data).digest()).decode(),
            "uri": f"{base_url}/v1beta/files/{self.id}",
            "state": "PROCESSING" if self.upload_id else "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            info["displayName"] = self.display_name
        if self.source == "GENERATED":
            info["downloadUri"] = f"{base_url}/v1beta/files/{self.id}:download?alt=media"
        return info


@dataclass
class BatchJob:
    """One job: its requests (key, metadata, body), its results once run, its state."""

    id: str
    model: str
    display_name: str
    created: float
    delay: float
    requests: list[tuple[str | None, Any, Any]]
    from_file: str | None
    results: list[dict[str, Any]] = field(default_factory=list)
    processed: bool = False
    cancelled_at: float | None = None
    failure: str | None = None
    output_file: str | None = None
    task: asyncio.Task[None] | None = None

    def state(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "BATCH_STATE_CANCELLED"
        if self.failure is not None:
            return "BATCH_STATE_FAILED"
        if now < self.created + self.delay / 2:
            return "BATCH_STATE_PENDING"
        if not self.processed or now < self.created + self.delay:
            return "BATCH_STATE_RUNNING"
        return "BATCH_STATE_SUCCEEDED"

    def ended(self, now: float) -> float | None:
        state = self.state(now)
        if state == "BATCH_STATE_CANCELLED":
            return self.cancelled_at
        if state in _TERMINAL:
            return max(self.created + self.delay, self.created)
        return None


class BatchService:
    """Jobs and files in memory; every method answers JSON or raises EngineError."""

    def __init__(self, generate: GenerateOne) -> None:
        self._generate = generate
        self._jobs: dict[str, BatchJob] = {}
        self._files: dict[str, StoredFile] = {}
        self._uploads: dict[str, str] = {}
        self.delay = DEFAULT_DELAY

    def set_delay(self, seconds: object) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise EngineError(400, "delay must be a number of seconds")
        if not 0 <= seconds <= MAX_DELAY:
            raise EngineError(400, f"delay must be between 0 and {MAX_DELAY:g} seconds")
        self.delay = float(seconds)

    # Jobs

    def create(self, model: str, body: Any, base_url: str) -> dict[str, Any]:
        batch = body.get("batch") if isinstance(body, dict) else None
        source = batch.get("inputConfig") if isinstance(batch, dict) else None
        if not isinstance(source, dict):
            raise EngineError(400, "Invalid JSON payload: expected batch.inputConfig.")
        assert isinstance(batch, dict)
        file_name = source.get("fileName")
        inline = source.get("requests")
        if (file_name is None) == (inline is None):
            raise EngineError(400, "batch.inputConfig needs exactly one of requests, fileName.")
        if file_name is not None:
            requests = self._file_requests(file_name)
        else:
            items = inline.get("requests") if isinstance(inline, dict) else None
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise EngineError(400, "batch.inputConfig.requests.requests must be a list.")
            requests = [(None, item.get("metadata"), item.get("request")) for item in items]
        if not requests:
            raise EngineError(400, "A batch needs at least one request.")
        self._forget_old_jobs()
        job = BatchJob(
            id=secrets.token_hex(8),
            model=model,
            display_name=str(batch.get("displayName") or ""),
            created=time.time(),
            delay=self.delay,
            requests=requests,
            from_file=file_name if isinstance(file_name, str) else None,
        )
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job), name=f"batch:{job.id}")
        return self._operation(job, base_url)

    def _file_requests(self, file_name: object) -> list[tuple[str | None, Any, Any]]:
        stored = self._files.get(str(file_name).removeprefix("files/"))
        if stored is None or stored.upload_id is not None:
            raise EngineError(404, f"File {file_name!r} not found.", status="NOT_FOUND")
        requests: list[tuple[str | None, Any, Any]] = []
        for number, line in enumerate(stored.data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                requests.append((f"line-{number}", None, None))
                continue
            key = entry.get("key")
            requests.append((str(key) if key is not None else None, None, entry.get("request")))
        return requests

    async def _run(self, job: BatchJob) -> None:
        """Answer every request in order; an error becomes that request's entry."""
        try:
            for key, metadata, request in job.requests:
                entry: dict[str, Any] = {}
                try:
                    model = _model_name(
                        request.get("model") if isinstance(request, dict) else None, job.model
                    )
                    entry["response"] = await self._generate(model, request)
                except EngineError as exc:
                    entry["error"] = _error_entry(exc)
                if job.from_file is not None:
                    entry = {"key": key, **entry}
                elif metadata is not None:
                    entry["metadata"] = metadata
                job.results.append(entry)
                await asyncio.sleep(0)
            if job.from_file is not None:
                self._write_output(job)
        except Exception as exc:  # a bug of ours fails the job, visibly
            job.failure = f"{exc.__class__.__name__}: {exc}"
            raise
        finally:
            job.processed = True

    def _write_output(self, job: BatchJob) -> None:
        lines = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in job.results)
        data = lines.encode()
        self._check_room(len(data))
        output = StoredFile(
            id=f"batch-{job.id}-output",
            display_name=f"{job.display_name} responses",
            mime_type="application/jsonl",
            source="GENERATED",
            created=time.time(),
            data=bytearray(data),
        )
        self._files[output.id] = output
        job.output_file = output.id
        job.results = []  # the file holds them

    def get(self, job_id: str, base_url: str) -> dict[str, Any]:
        return self._operation(self._job(job_id), base_url)

    def list(self, page_size: int, page_token: str | None, base_url: str) -> dict[str, Any]:
        size = page_size if 0 < page_size <= 1000 else PAGE_SIZE
        ids = list(reversed(self._jobs))
        start = 0
        if page_token:
            try:
                start = int(page_token)
            except ValueError:
                raise EngineError(400, "Invalid page token.") from None
        page = ids[start : start + size]
        answer: dict[str, Any] = {
            "operations": [self._operation(self._jobs[i], base_url) for i in page]
        }
        if start + size < len(ids):
            answer["nextPageToken"] = str(start + size)
        return answer

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self._job(job_id)
        if job.state(time.time()) in _TERMINAL:
            raise EngineError(
                400, f"Batch batches/{job_id} has already ended.", status="FAILED_PRECONDITION"
            )
        job.cancelled_at = time.time()
        if job.task is not None:
            job.task.cancel()
        return {}

    def delete(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.pop(self._job(job_id).id)
        if job.task is not None:
            job.task.cancel()
        if job.output_file is not None:
            self._files.pop(job.output_file, None)
        return {}

    def _job(self, job_id: str) -> BatchJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise EngineError(404, f"Batch batches/{job_id} not found.", status="NOT_FOUND")
        return job

    def _forget_old_jobs(self) -> None:
        now = time.time()
        for job_id in list(self._jobs):
            if len(self._jobs) < MAX_JOBS:
                return
            if self._jobs[job_id].state(now) in _TERMINAL:
                self.delete(job_id)
        if len(self._jobs) >= MAX_JOBS:
            raise EngineError(429, "Too many batch jobs are running.", status="RESOURCE_EXHAUSTED")

    def _operation(self, job: BatchJob, base_url: str) -> dict[str, Any]:
        now = time.time()
        state = job.state(now)
        done = sum(1 for entry in job.results if "response" in entry)
        failed = sum(1 for entry in job.results if "error" in entry)
        total = len(job.requests)
        if job.output_file is not None:
            done, failed = self._file_counts(job.output_file)
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "model": f"models/{job.model}",
            "displayName": job.display_name,
            "createTime": _timestamp(job.created),
            "updateTime": _timestamp(now),
            "batchStats": {
                "requestCount": str(total),
                "successfulRequestCount": str(done),
                "failedRequestCount": str(failed),
                "pendingRequestCount": str(total - done - failed),
            },
            "state": state,
            "name": f"batches/{job.id}",
        }
        ended = job.ended(now)
        if ended is not None:
            metadata["endTime"] = _timestamp(ended)
        operation: dict[str, Any] = {"name": f"batches/{job.id}", "metadata": metadata}
        if state == "BATCH_STATE_SUCCEEDED":
            if job.output_file is not None:
                output: dict[str, Any] = {"responsesFile": f"files/{job.output_file}"}
            else:
                output = {"inlinedResponses": {"inlinedResponses": job.results}}
            metadata["output"] = output
            operation["response"] = {"@type": _OUTPUT_TYPE, **output}
        if state in _TERMINAL:
            operation["done"] = True
        if state == "BATCH_STATE_FAILED":
            operation["error"] = {"code": 13, "message": job.failure or "the batch failed"}
        return operation

    def _file_counts(self, file_id: str) -> tuple[int, int]:
        stored = self._files.get(file_id)
        if stored is None:
            return 0, 0
        lines = stored.data.decode().splitlines()
        failed = sum(1 for line in lines if '"error":' in line and '"response":' not in line)
        return len(lines) - failed, failed

    # Files

    def start_upload(self, body: Any, headers: dict[str, str], base_url: str) -> str:
        """Open a resumable upload; returns the upload URL for its chunks."""
        info = body.get("file") if isinstance(body, dict) else None
        info = info if isinstance(info, dict) else {}
        if headers.get("x-goog-upload-protocol", "").lower() != "resumable" or (
            headers.get("x-goog-upload-command", "").lower() != "start"
        ):
            raise EngineError(400, "Only resumable uploads are supported: send a start command.")
        size_text = headers.get("x-goog-upload-header-content-length")
        size = int(size_text) if size_text and size_text.isdigit() else None
        if size is not None:
            self._check_room(size)
        mime = headers.get("x-goog-upload-header-content-type") or str(
            info.get("mimeType") or "application/octet-stream"
        )
        name = str(info.get("name") or "").removeprefix("files/") or secrets.token_hex(6)
        if name in self._files:
            raise EngineError(409, f"File files/{name} already exists.", status="ALREADY_EXISTS")
        upload_id = secrets.token_urlsafe(24)
        self._files[name] = StoredFile(
            id=name,
            display_name=info.get("displayName")
            if isinstance(info.get("displayName"), str)
            else None,
            mime_type=mime,
            source="UPLOADED",
            created=time.time(),
            expected_size=size,
            upload_id=upload_id,
        )
        self._uploads[upload_id] = name
        return f"{base_url}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"

    def upload_chunk(
        self, upload_id: str, command: str, offset: str, data: bytes, base_url: str
    ) -> tuple[str, dict[str, Any]]:
        """Append one chunk; returns the upload status and the body to answer."""
        name = self._uploads.get(upload_id)
        stored = self._files.get(name or "")
        if stored is None:
            raise EngineError(404, "No such upload (it was finished or never started).")
        if offset != str(len(stored.data)):
            raise EngineError(
                400, f"Upload offset {offset!r} != {len(stored.data)} bytes received."
            )
        self._check_room(len(data))
        stored.data.extend(data)
        words = {word.strip().lower() for word in command.split(",")}
        if "finalize" not in words:
            return "active", {}
        if stored.expected_size is not None and stored.expected_size != len(stored.data):
            raise EngineError(
                400, f"Upload has {len(stored.data)} bytes, {stored.expected_size} were declared."
            )
        stored.upload_id = None
        del self._uploads[upload_id]
        return "final", {"file": stored.to_json(base_url)}

    def file(self, file_id: str, base_url: str) -> dict[str, Any]:
        return self._file(file_id).to_json(base_url)

    def download(self, file_id: str) -> bytes:
        return bytes(self._file(file_id).data)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        stored = self._files.pop(self._file(file_id).id)
        if stored.upload_id is not None:
            self._uploads.pop(stored.upload_id, None)
        return {}

    def _file(self, file_id: str) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise EngineError(404, f"File files/{file_id} not found.", status="NOT_FOUND")
        return stored

    def _check_room(self, extra: int) -> None:
        used = sum(len(f.data) for f in self._files.values())
        if used + extra > MAX_FILE_BYTES:
            raise EngineError(
                413, f"Files would take more than {MAX_FILE_BYTES} bytes: delete some first."
            )

    async def aclose(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
