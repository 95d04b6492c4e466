"""The local server's Batch and Files API, driven by the real google-genai SDK."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from google import genai
from google.genai import errors, types

from agentrt_jupyter.server.process import LocalServer

T = TypeVar("T")
MODEL = "gemini-2.5-flash"
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
pytestmark = pytest.mark.timeout(60)


def run(server: LocalServer, body: Callable[[Any], Awaitable[T]]) -> T:
    """`body(client.aio)` on a fresh loop, the client closed after."""

    async def main() -> T:
        client = genai.Client(
            api_key=server.token,
            http_options=types.HttpOptions(
                base_url=server.url,
                api_version="v1beta",
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        try:
            return await body(client.aio)
        finally:
            await client.aio.aclose()

    return asyncio.run(main())


async def finished(aio: Any, name: str) -> Any:
    """The job once it has ended (polled as a client does; the job takes ~0.2 s)."""
    while True:
        job = await aio.batches.get(name=name)
        if job.state.name in DONE:
            return job
        await asyncio.sleep(0.05)


def request(text: str, key: str) -> types.InlinedRequest:
    return types.InlinedRequest.model_validate(
        {"contents": [{"role": "user", "parts": [{"text": text}]}], "metadata": {"key": key}}
    )


def raw(server: LocalServer, method: str, path: str, **headers: str) -> tuple[int, Any]:
    call = urllib.request.Request(server.url + path, method=method, headers=headers, data=b"{}")
    try:
        with urllib.request.urlopen(call, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_an_inline_job_answers_every_request_in_order_with_its_metadata(
    server: LocalServer, tag: str
) -> None:
    async def body(aio: Any) -> Any:
        created = await aio.batches.create(
            model=MODEL,
            src=[request(f"{tag} one", "a"), request(f"@@fault 503\n{tag} two", "b")],
            config={"display_name": "two rows"},
        )
        assert created.state.name == "JOB_STATE_PENDING" and created.display_name == "two rows"
        return await finished(aio, created.name)

    job = run(server, body)
    assert job.state.name == "JOB_STATE_SUCCEEDED" and job.end_time is not None
    first, second = job.dest.inlined_responses
    assert first.metadata == {"key": "a"} and first.response.text == f"Echo: {tag} one"
    assert first.response.usage_metadata.prompt_token_count == 2
    assert second.metadata == {"key": "b"} and second.error.code == 503


def test_a_job_from_an_uploaded_jsonl_file_answers_with_a_file(
    server: LocalServer, tag: str
) -> None:
    lines = [
        {"key": "x", "request": {"contents": [{"parts": [{"text": f"{tag} x"}]}]}},
        {"key": "y", "request": {"contents": [{"parts": [{"text": f"{tag} y"}]}]}},
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode() + b"not json\n"

    async def body(aio: Any) -> tuple[Any, Any, bytes]:
        uploaded = await aio.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
        job = await finished(aio, (await aio.batches.create(model=MODEL, src=uploaded.name)).name)
        output = await aio.files.download(file=job.dest.file_name)
        return uploaded, job, output

    uploaded, job, output = run(server, body)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert uploaded.size_bytes == len(data) and uploaded.state.name == "ACTIVE"
    answers = [json.loads(line) for line in output.decode().splitlines()]
    assert [a["key"] for a in answers] == ["x", "y", "line-3"]
    assert (
        answers[1]["response"]["candidates"][0]["content"]["parts"][0]["text"] == f"Echo: {tag} y"
    )
    assert answers[2]["error"]["code"] == 400


def test_list_cancel_and_delete(server: LocalServer, tag: str) -> None:
    server.set_batch_delay(60)
    try:

        async def body(aio: Any) -> tuple[Any, list[Any], Any]:
            slow = await aio.batches.create(model=MODEL, src=[request(f"{tag} slow", "s")])
            page = await aio.batches.list(config={"page_size": 1})
            listed = list(page.page)
            await aio.batches.cancel(name=slow.name)
            cancelled = await aio.batches.get(name=slow.name)
            with pytest.raises(errors.ClientError) as again:
                await aio.batches.cancel(name=slow.name)  # it has ended
            assert again.value.code == 400
            await aio.batches.delete(name=slow.name)
            with pytest.raises(errors.ClientError) as gone:
                await aio.batches.get(name=slow.name)
            assert gone.value.code == 404
            return slow, listed, cancelled

        slow, listed, cancelled = run(server, body)
    finally:
        server.set_batch_delay(0.2)
    assert [job.name for job in listed] == [slow.name]  # newest first, one per page
    assert cancelled.state.name == "JOB_STATE_CANCELLED"


def test_the_key_guards_every_route_but_an_upload_url_is_its_own_credential(
    server: LocalServer,
) -> None:
    assert raw(server, "GET", "/v1beta/batches")[0] == 400
    assert raw(server, "POST", f"/v1beta/models/{MODEL}:batchGenerateContent")[0] == 400
    assert raw(server, "GET", "/v1beta/files/nothing")[0] == 400
    key = {"x-goog-api-key": server.token}
    assert raw(server, "GET", "/v1beta/files/nothing", **key)[0] == 404
    assert raw(server, "GET", "/v1beta/batches/nothing", **key)[0] == 404
    status, answer = raw(server, "POST", f"/v1beta/models/{MODEL}:batchGenerateContent", **key)
    assert status == 400 and "inputConfig" in answer["error"]["message"]
    chunk = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
    assert raw(server, "POST", "/upload/v1beta/files?upload_id=guess", **chunk)[0] == 404
    with pytest.raises(RuntimeError, match="delay must be between"):
        server.set_batch_delay(-1)
