"""The local server under a bad day: bounded request log, read timeouts, size limits,
`@@` lines left alone for real engines, and the garbage-reply faults on the wire."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils
from google import genai
from google.genai import errors, types

from agentrt_jupyter.server.app import create_app
from agentrt_jupyter.server.engines.base import EngineChunk, GenerateRequest
from agentrt_jupyter.server.limits import ServerLimits
from agentrt_jupyter.server.process import LocalServer

MODEL = "gemini-2.5-flash"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
COUNT = f"/v1beta/models/{MODEL}:countTokens"
TIGHT = ServerLimits(
    header_timeout=1.0,
    body_timeout=1.0,
    max_body_bytes=64 * 1024,
    log_records=5,
    log_body_bytes=1024,
    log_total_body_bytes=4096,
)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer.start() as running:
        yield running


@pytest.fixture(scope="module")
def tight() -> Iterator[LocalServer]:
    """A server with second-long read timeouts and a tiny request log."""
    with LocalServer.start(limits=TIGHT) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    for name in ("server", "tight"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def prompt(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def send(
    server: LocalServer,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    key: str | None = None,
    method: str = "POST",
) -> Answer:
    """One request with aiohttp, redirects not followed; the key defaults to the right one."""

    async def main() -> Answer:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        headers = {"x-goog-api-key": server.token if key is None else key}
        if data is not None:
            headers["content-type"] = "application/json"
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, server.url + path, data=data, headers=headers, allow_redirects=False
            ) as response,
        ):
            return Answer(response.status, dict(response.headers), await response.read())

    return asyncio.run(main())


def sse_events(body: bytes) -> list[bytes]:
    """The payloads of the `data:` events of an SSE body, in order."""
    events = [event for event in body.split(b"\r\n\r\n") if event]
    assert all(event.startswith(b"data: ") for event in events), body
    return [event[len(b"data: ") :] for event in events]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def connect(server: LocalServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def read_until_closed(sock: socket.socket, timeout: float = 20.0) -> bytes:
    """Everything the server sends until it closes; socket.timeout if it never does."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def parse_response(raw: bytes) -> tuple[int, bytes]:
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


# The request log


def test_refused_requests_keep_metadata_only(server: LocalServer) -> None:
    marker = "refused-body-marker"
    wrong_key = send(server, GENERATE, prompt(marker), key="wrong")
    not_json = send(server, GENERATE, b"{" + marker.encode())
    wrong_shape = send(server, GENERATE, {"contents": marker})
    assert [wrong_key.status, not_json.status, wrong_shape.status] == [400, 400, 400]
    assert wrong_key.json["error"]["status"] == "INVALID_ARGUMENT"
    records = server.requests()
    assert marker not in json.dumps(records)
    assert [(r["outcome"], r["status"], r["api_key_ok"]) for r in records] == [
        ("rejected", 400, False),
        ("error", 400, True),
        ("error", 400, True),
    ]
    assert [r["body"] for r in records] == [None, None, None]
    assert records[0]["body_bytes"] == len(json.dumps(prompt(marker)))


def test_wrong_key_bodies_are_not_held_in_memory(server: LocalServer) -> None:
    body = json.dumps(prompt("x" * (15 * MIB))).encode()
    assert send(server, GENERATE, body, key="wrong").status == 400
    before = rss_bytes(server.pid)
    for _ in range(3):
        assert send(server, GENERATE, body, key="wrong").status == 400
    grown = rss_bytes(server.pid) - before
    assert grown < 30 * MIB, f"server RSS grew by {grown / MIB:.0f} MiB after 45 MiB of refusals"
    assert [r["body"] for r in server.requests()] == [None] * 4


def test_large_accepted_bodies_are_kept_as_bounded_excerpts(server: LocalServer) -> None:
    small = prompt("small body")
    assert send(server, COUNT, small).json == {"totalTokens": 2}
    big = json.dumps(prompt("big " + "y" * MIB)).encode()
    before = rss_bytes(server.pid)
    for _ in range(40):
        assert send(server, COUNT, big).json == {"totalTokens": 2}
    grown = rss_bytes(server.pid) - before
    assert grown < 20 * MIB, f"server RSS grew by {grown / MIB:.0f} MiB after 40 MiB of bodies"
    first, *rest = server.requests()
    assert (first["body"], first["body_truncated"]) == (small, False)
    for record in rest:
        assert record["body_truncated"] is True
        assert record["body_bytes"] == len(big)
        assert isinstance(record["body"], str) and len(record["body"]) <= 4096
        assert record["body"].startswith('{"contents": [{"role": "user", "parts": [{"text": "big y')


def test_log_keeps_the_last_records_and_ids_keep_growing(tight: LocalServer) -> None:
    for i in range(8):
        assert send(tight, COUNT, prompt(f"request {i}")).status == 200
    records = tight.requests()
    assert len(records) == TIGHT.log_records
    ids = [r["id"] for r in records]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert [r["body"]["contents"][0]["parts"][0]["text"] for r in records] == [
        f"request {i}" for i in range(3, 8)
    ]
    assert len(tight.wait_for_count(8, timeout=5)) == 5
    with pytest.raises(RuntimeError, match="cleared or evicted"):
        tight.wait_for_request(ids[0] - 1, timeout=5)
    tight.reset()
    assert send(tight, COUNT, prompt("after reset")).status == 200
    assert tight.last_request()["id"] == ids[-1] + 1


def test_kept_bodies_stay_within_the_total_budget(tight: LocalServer) -> None:
    body = prompt("z" * 900)
    size = len(json.dumps(body))
    for _ in range(5):
        assert send(tight, COUNT, body).status == 200
    records = tight.requests()
    kept = [r for r in records if r["body"] is not None]
    assert sum(r["body_bytes"] for r in kept) <= TIGHT.log_total_body_bytes
    assert len(kept) == TIGHT.log_total_body_bytes // size
    assert kept == records[-len(kept) :], "the oldest bodies go first"
    assert all(r["body_truncated"] for r in records[: -len(kept)])


def test_generate_records_carry_the_answered_status(server: LocalServer) -> None:
    server.push_faults("503")
    assert send(server, GENERATE, prompt("first")).status == 503
    assert send(server, STREAM, prompt("second")).status == 200
    records = server.requests()
    assert [(r["kind"], r["status"], r["outcome"], r["fault"]) for r in records] == [
        ("generate", 503, "error", "503"),
        ("stream", 200, "complete", None),
    ]
    assert set(records[0]) == {
        "id",
        "received",
        "finished",
        "method",
        "path",
        "model",
        "kind",
        "api_key_ok",
        "fault",
        "status",
        "outcome",
        "chunks_sent",
        "body",
        "body_truncated",
        "body_bytes",
    }


# Read timeouts and size limits


def test_stalled_headers_get_a_408_and_the_connection_closes(tight: LocalServer) -> None:
    with connect(tight) as sock:
        sock.sendall(f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\nContent-Le".encode())
        status, body = parse_response(read_until_closed(sock))
    assert status == 408
    assert json.loads(body)["error"]["status"] == "DEADLINE_EXCEEDED"
    assert tight.requests() == []


def test_many_stalled_connections_do_not_stop_others(tight: LocalServer) -> None:
    stalled = [connect(tight) for _ in range(100)]
    try:
        for sock in stalled:
            sock.sendall(f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\n".encode())
        assert tight.health()["ok"]
        assert [parse_response(read_until_closed(sock))[0] for sock in stalled] == [408] * 100
    finally:
        for sock in stalled:
            sock.close()


def test_a_silent_connection_is_closed(tight: LocalServer) -> None:
    with connect(tight) as sock:
        status, _ = parse_response(read_until_closed(sock))
    assert status == 408


def test_stalled_body_gets_a_gemini_408_and_the_connection_closes(tight: LocalServer) -> None:
    head = (
        f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\nx-goog-api-key: {tight.token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with connect(tight) as sock:
        sock.sendall(head.encode() + b'{"contents": [')
        status, body = parse_response(read_until_closed(sock))
    assert status == 408
    assert json.loads(body)["error"]["code"] == 408
    (record,) = tight.requests()
    assert (record["outcome"], record["status"], record["body"]) == ("rejected", 408, None)


def test_an_idle_keepalive_connection_outlives_the_header_timeout(tight: LocalServer) -> None:
    request = (
        f"GET /_agentrt/health HTTP/1.1\r\nHost: x\r\nx-agentrt-token: {tight.token}\r\n\r\n"
    ).encode()
    with connect(tight) as sock:
        for attempt in range(2):
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert (response.status, json.loads(response.read())["ok"]) == (200, True)
            if attempt == 0:
                # Nothing may arrive (a 408, or the close) while the connection sits idle.
                readable, _, _ = select.select([sock], [], [], 2.5 * TIGHT.header_timeout)
                assert readable == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_a_gemini_413(tight: LocalServer, chunked: bool) -> None:
    body = json.dumps(prompt("w" * TIGHT.max_body_bytes)).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16384):
            yield body[start : start + 16384]

    async def main() -> Answer:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                tight.url + GENERATE,
                data=pieces() if chunked else body,
                headers={"x-goog-api-key": tight.token},
            ) as response,
        ):
            return Answer(response.status, dict(response.headers), await response.read())

    answer = asyncio.run(main())
    assert answer.status == 413
    assert answer.json["error"]["message"] == (
        f"Request payload size exceeds the limit: {TIGHT.max_body_bytes} bytes."
    )
    (record,) = tight.requests()
    assert (record["outcome"], record["status"], record["body"]) == ("rejected", 413, None)


def test_the_default_body_limit_is_twenty_mib(server: LocalServer) -> None:
    answer = send(server, GENERATE, b" " * (20 * MIB + 1))
    assert (answer.status, answer.json["error"]["code"]) == (413, 413)


# `@@` lines belong to the scripted engine


class RecordingEngine:
    """An engine that answers `recorded` and keeps every request it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.received: list[GenerateRequest] = []

    def requested_fault(self, request: GenerateRequest) -> str | None:
        return None

    async def count_tokens(self, request: GenerateRequest) -> int:
        return 1

    async def aclose(self) -> None:
        return None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[EngineChunk]:
        self.received.append(request)
        yield EngineChunk([{"text": "recorded"}], {"promptTokenCount": 1}, "STOP")


def test_a_real_engine_gets_at_at_lines_as_written() -> None:
    engine = RecordingEngine()
    text = "Review this diff:\n@@ -1,3 +1,4 @@\n-old\n+new\n@@fault 503\n@@reply no"

    async def main() -> str | None:
        async with test_utils.TestServer(create_app(engine, "token")) as app_server:
            client = genai.Client(
                api_key="token",
                http_options=types.HttpOptions(
                    base_url=str(app_server.make_url("")),
                    retry_options=types.HttpRetryOptions(attempts=1),
                ),
            )
            try:
                response = await client.aio.models.generate_content(model=MODEL, contents=text)
            finally:
                await client.aio.aclose()
            return response.text

    assert asyncio.run(main()) == "recorded"
    (request,) = engine.received
    assert request.contents == [{"role": "user", "parts": [{"text": text}]}]


def test_queued_faults_apply_to_any_engine() -> None:
    engine = RecordingEngine()

    async def main() -> errors.APIError:
        app = create_app(engine, "token")
        async with test_utils.TestServer(app) as app_server, aiohttp.ClientSession() as session:
            queued = await session.post(
                app_server.make_url("/_agentrt/faults"),
                json={"faults": ["503"], "match": None},
                headers={"x-agentrt-token": "token"},
            )
            assert queued.status == 200
            client = genai.Client(
                api_key="token",
                http_options=types.HttpOptions(
                    base_url=str(app_server.make_url("")),
                    retry_options=types.HttpRetryOptions(attempts=1),
                ),
            )
            try:
                await client.aio.models.generate_content(model=MODEL, contents="hi")
            except errors.APIError as exc:
                return exc
            finally:
                await client.aio.aclose()
            raise AssertionError("the queued 503 was not applied")

    exc = asyncio.run(main())
    assert (exc.code, exc.status) == (503, "UNAVAILABLE")
    assert engine.received == []


# Garbage faults put the documented bytes on the wire


@pytest.mark.parametrize("path", [GENERATE, STREAM])
def test_html_fault_is_an_html_error_page(server: LocalServer, path: str) -> None:
    answer = send(server, path, prompt("@@fault html 502\nhi"))
    assert answer.status == 502
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.body.startswith(b"<!DOCTYPE html>")
    assert b"<title>Error 502 (Bad Gateway)!!1</title>" in answer.body
    record = server.last_request()
    assert (record["status"], record["outcome"], record["fault"]) == (502, "error", "html 502")


def test_redirect_fault_loops_back_to_the_same_url(server: LocalServer) -> None:
    server.push_faults("redirect")
    first = send(server, STREAM, prompt("hi"))
    assert first.status == 302
    location = first.headers["Location"]
    assert location == f"{STREAM}&agentrt_redirect=302"
    again = send(server, location, method="GET")
    assert (again.status, again.headers["Location"]) == (302, location)
    kept = send(server, location, prompt("hi"))
    assert (kept.status, kept.headers["Location"]) == (302, location)
    assert [(r["kind"], r["status"], r["outcome"]) for r in server.requests()] == [
        ("stream", 302, "redirected"),
        ("redirect", 302, "redirected"),
        ("redirect", 302, "redirected"),
    ]


def test_redirect_code_is_kept_and_a_following_client_gives_up(server: LocalServer) -> None:
    server.push_faults("redirect 307")

    async def main() -> aiohttp.TooManyRedirects:
        async with aiohttp.ClientSession() as session:
            try:
                await session.post(
                    server.url + GENERATE,
                    json=prompt("hi"),
                    headers={"x-goog-api-key": server.token},
                    max_redirects=3,
                )
            except aiohttp.TooManyRedirects as exc:
                return exc
        raise AssertionError("the redirect did not loop")

    history = asyncio.run(main()).history
    assert [r.status for r in history] == [307] * 3
    assert {r.headers["Location"] for r in history} == {f"{GENERATE}?agentrt_redirect=307"}
    assert [r["kind"] for r in server.requests()] == ["generate"] + ["redirect"] * 2


@pytest.mark.parametrize(
    ("spec", "status", "body"),
    [
        ("bad_json 429", 429, b'{"error":[1]}'),
        ("bad_json 500", 500, b'{"error":[1]}'),
        ("bad_json 503 error_string", 503, b'{"error":"Injected garbage"}'),
        ("bad_json 200", 200, b'{"candidates":"x"}'),
        ("bad_json 200 list", 200, b"[1,2]"),
        ("bad_json 200 empty", 200, b"{}"),
        ("bad_json 200 text", 200, b"this is not JSON"),
    ],
)
def test_bad_json_fault_sends_the_wrong_shape(
    server: LocalServer, spec: str, status: int, body: bytes
) -> None:
    server.push_faults(spec)
    answer = send(server, GENERATE, prompt("hi"))
    assert (answer.status, answer.body) == (status, body)
    assert answer.headers["Content-Type"] == "application/json"
    record = server.last_request()
    outcome = "error" if status >= 400 else "garbage"
    assert (record["status"], record["outcome"], record["fault"]) == (status, outcome, spec)


def test_quota_garbage_fault_has_unparseable_details(server: LocalServer) -> None:
    answer = send(server, STREAM, prompt("@@fault quota_garbage\nhi"))
    assert answer.status == 429
    error = answer.json["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": "exceeded"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"},
    ]
    assert error["message"].endswith("Please retry in soon.")


@pytest.mark.parametrize(
    ("spec", "garbage"),
    [("sse_garbage 2", b"this is not JSON"), ("sse_garbage 1 candidates", b'{"candidates":"x"}')],
)
def test_sse_garbage_fault_follows_k_good_events(
    server: LocalServer, spec: str, garbage: bytes
) -> None:
    good = int(spec.split()[1])
    answer = send(server, STREAM, prompt(f"@@fault {spec}\na b c"))
    assert answer.status == 200
    *events, last = sse_events(answer.body)
    assert last == garbage
    assert [json.loads(e)["candidates"][0]["content"]["parts"] for e in events] == [
        [{"text": "Echo: "}],
        [{"text": "a "}],
    ][:good]
    record = server.last_request()
    assert (record["status"], record["outcome"], record["chunks_sent"]) == (200, "garbage", good)


def test_sse_garbage_fault_is_the_whole_body_without_a_stream(server: LocalServer) -> None:
    answer = send(server, GENERATE, prompt("@@fault sse_garbage 1 list\na b"))
    assert (answer.status, answer.body) == (200, b"[1,2]")


def test_truncated_json_fault_cuts_the_reply_in_half(server: LocalServer) -> None:
    whole = send(server, GENERATE, prompt("one two three"))
    server.push_faults("truncated_json")
    cut = send(server, GENERATE, prompt("one two three"))
    assert cut.status == 200
    assert int(cut.headers["Content-Length"]) == len(cut.body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.body)
    # The replies differ only in their responseId (agentrt-<record id>), near the end.
    assert whole.body.startswith(cut.body)
    assert abs(len(cut.body) - len(whole.body) // 2) <= 1
    assert server.last_request()["outcome"] == "garbage"


def test_truncated_json_fault_cuts_a_streams_first_event(server: LocalServer) -> None:
    whole = sse_events(send(server, STREAM, prompt("one two three")).body)
    answer = send(server, STREAM, prompt("@@fault truncated_json\none two three"))
    assert answer.status == 200
    (event,) = sse_events(answer.body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(event)
    assert whole[0].startswith(event)
    assert abs(len(event) - len(whole[0]) // 2) <= 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("html", "expected 1 argument"),
        ("html 99", "not allowed"),
        ("redirect 200", "not allowed"),
        ("bad_json 200 nope", "unknown SHAPE"),
        ("sse_garbage", "expected `sse_garbage K"),
        ("quota_garbage 1", "expected 0 argument"),
        ("truncated_json 2", "expected 0 argument"),
    ],
)
def test_bad_garbage_specs_are_refused(server: LocalServer, spec: str, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        server.push_faults(spec)
    answer = send(server, GENERATE, prompt(f"@@fault {spec}\nhi"))
    assert answer.status == 400
    assert message in answer.json["error"]["message"]
