"""Scripted faults: the failures a real Gemini endpoint (or what stands in front of it)
produces, on demand.

A fault is written as a short SPEC string, the same in a scripted prompt (`@@fault SPEC`)
and in the control queue (`POST /_agentrt/faults`, which applies to any engine).
`parse_fault` turns it into a `Fault`, and `Fault.plan` into what the HTTP layer does at
each of three points: before the headers, per chunk, and once the chunks stop. The error
bodies copy what the real service sends, so the SDK raises the same exceptions with the
same `details`. On the OpenAI and Anthropic routes (`wire/`) the same SPECs apply: the
HTTP error kinds (`CODE`, `429 ...`, `sse_error`) take that provider's error shape and
headers (`wire/openai.py`, `wire/anthropic.py` say which); the rest are the same bytes.

SPECs (K counts the good chunks sent, or generated for a non-stream call, first):

- `CODE` (4xx/5xx): a Gemini error JSON with that status.
- `429 [minute|day|zero] [DELAY]`: the free tier's 429 with QuotaFailure, Help and
  RetryInfo (retryDelay DELAY such as `0.2s` or `200ms`; default 1s, 3600s, 30s).
- `drop_headers` / `hang_headers`: close the connection / stall before any header.
- `hang`: send 200 headers, then stall.
- `drop_after K` / `hang_after K`: close / stall after K chunks.
- `sse_error K [CODE]`: after K chunks, an SSE event holding a Gemini error JSON
  (default 500); a non-stream call answers that error with its status instead.
- `slow MS`: wait MS milliseconds before each chunk.
- `tiny N`: N one-token chunks of `x`, whatever the engine would have said.
- `no_usage`: on the OpenAI route, no usage chunk even when the client asks for one
  (as llama.cpp's server and some other compatible servers do); elsewhere nothing.

Garbage, for testing how a client copes with replies that are not Gemini's:

- `html CODE` (200-599): a `text/html` error page with that status, as a proxy or
  load balancer sends.
- `redirect [CODE]` (301/302/303/307/308, default 302): a redirect to the same URL
  with `agentrt_redirect=1` added to the query; any request carrying that marker is
  redirected the same way again, so a client that follows redirects loops.
- `bad_json CODE [SHAPE]` (200-599): an `application/json` body of the wrong shape:
  SHAPE is one of `GARBAGE` (default `error_list` for an error code, `candidates` for a
  success code; `deep` is 100,000 nested `[`, deeper than a JSON parser recurses).
- `quota_garbage`: a 429 RESOURCE_EXHAUSTED whose QuotaFailure `violations` is a string
  and whose RetryInfo `retryDelay` is `soon`.
- `sse_garbage K [SHAPE]`: after K chunks, an SSE `data:` line holding SHAPE (default
  `text`, which is not JSON), then the end of the stream; a non-stream call answers
  SHAPE as its 200 body.
- `truncated_json`: a non-stream call answers its reply's JSON cut in half (200, with a
  Content-Length that matches the cut body); a stream sends its first event's JSON cut
  in half, then ends.
"""

from __future__ import annotations

import http
import json
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .engines.base import EngineChunk

FaultKind = Literal[
    "http_error",
    "drop_headers",
    "drop_after",
    "sse_error",
    "hang",
    "hang_headers",
    "hang_after",
    "slow",
    "tiny",
    "html",
    "redirect",
    "bad_json",
    "quota_garbage",
    "sse_garbage",
    "truncated_json",
    "no_usage",
]
QuotaScope = Literal["minute", "day", "zero"]

STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_DEFAULT_MESSAGES: dict[int, str] = {
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}

_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
_QUOTA_IDS = {
    "minute": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
    "day": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
    "zero": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
}
_QUOTA_VALUES = {"minute": "10", "day": "250", "zero": "0"}
_QUOTA_DEFAULT_DELAYS = {"minute": 1.0, "day": 3600.0, "zero": 30.0}
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, head to: "
    "https://ai.google.dev/gemini-api/docs/rate-limits. "
    "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
    "* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}\n"
    "Please retry in {retry}."
)
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")
_TINY_PARTS: list[dict[str, Any]] = [{"text": "x"}]
DEEP_NESTING = 100_000
"""How many `[` the `deep` garbage shape opens: past any JSON parser's recursion limit."""

GARBAGE: dict[str, bytes] = {
    "error_list": b'{"error":[1]}',
    "error_string": b'{"error":"Injected garbage"}',
    "list": b"[1,2]",
    "candidates": b'{"candidates":"x"}',
    "empty": b"{}",
    "text": b"this is not JSON",
    "deep": b"[" * DEEP_NESTING,
}
"""The wrong-shape bodies `bad_json` and `sse_garbage` send, by SHAPE name."""

REDIRECT_MARKER = "agentrt_redirect"
"""The query parameter that marks a request as the follow-up of a `redirect` fault."""

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Reply:
    """A whole HTTP reply sent instead of the model's (`headers` besides its type)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Redirect:
    """A redirect back to the request's own URL, marked with `REDIRECT_MARKER`."""

    status: int


@dataclass(frozen=True)
class Drop:
    """Close the connection once what was written so far is flushed."""


@dataclass(frozen=True)
class Hang:
    """Stall until the client goes away; `after_headers` sends 200 headers first."""

    after_headers: bool = False


@dataclass(frozen=True)
class Event:
    """Ends the reply: an SSE `data:` line in a stream, else a whole reply with `status`."""

    payload: bytes
    status: int = 200


@dataclass(frozen=True)
class Truncate:
    """Ends the reply with JSON cut in half: the whole body, or a stream's first event."""


BeforeHeaders = Reply | Redirect | Drop | Hang
AfterChunks = Drop | Hang | Event | Truncate


@dataclass(frozen=True)
class FaultPlan:
    """What the HTTP layer does for one request: `before_headers` replaces the reply;
    otherwise chunks come from the engine (or `tiny` ones), each after `chunk_delay`
    seconds, until `stop_after` have gone out, and `after_chunks` ends the reply."""

    before_headers: BeforeHeaders | None = None
    chunk_delay: float = 0.0
    tiny: int | None = None
    stop_after: int | None = None
    after_chunks: AfterChunks | None = None


NO_FAULT = FaultPlan()


@dataclass(frozen=True)
class Fault:
    """One parsed fault SPEC.

    `count` is K for the `*_after`, `sse_*` kinds and N for `tiny`; `delay` is in
    seconds (`slow`, and the 429 retry delay); `code` is the HTTP or SSE error code;
    `shape` names a `GARBAGE` body.
    """

    spec: str
    kind: FaultKind
    count: int = 0
    delay: float = 0.0
    code: int = 0
    quota: QuotaScope | None = None
    shape: str = ""

    def plan(self, model: str, *, stream: bool) -> FaultPlan:
        """This fault's policy for one request to `model`."""
        return _POLICIES[self.kind](self, model, stream)


def _error_json(fault: Fault, model: str) -> bytes:
    if fault.quota is not None:
        return _dumps(quota_error_body(fault.quota, fault.delay, model))
    return _dumps(error_body(fault.code))


def _http_error(fault: Fault, model: str, stream: bool) -> FaultPlan:
    return FaultPlan(before_headers=Reply(fault.code, _error_json(fault, model)))


def _sse_error(fault: Fault, model: str, stream: bool) -> FaultPlan:
    event = Event(_error_json(fault, model), fault.code)
    return FaultPlan(stop_after=fault.count, after_chunks=event)


def _html(fault: Fault, model: str, stream: bool) -> FaultPlan:
    return FaultPlan(before_headers=Reply(fault.code, html_page(fault.code), "text/html"))


def _bad_json(fault: Fault, model: str, stream: bool) -> FaultPlan:
    return FaultPlan(before_headers=Reply(fault.code, GARBAGE[fault.shape]))


def _quota_garbage(fault: Fault, model: str, stream: bool) -> FaultPlan:
    return FaultPlan(before_headers=Reply(429, _dumps(quota_garbage_body(model))))


def _sse_garbage(fault: Fault, model: str, stream: bool) -> FaultPlan:
    return FaultPlan(stop_after=fault.count, after_chunks=Event(GARBAGE[fault.shape]))


def _truncated_json(fault: Fault, model: str, stream: bool) -> FaultPlan:
    # A stream needs only its first chunk, which goes out cut.
    return FaultPlan(stop_after=1 if stream else None, after_chunks=Truncate())


_Policy = Callable[[Fault, str, bool], FaultPlan]
_POLICIES: dict[FaultKind, _Policy] = {
    "http_error": _http_error,
    "drop_headers": lambda fault, model, stream: FaultPlan(before_headers=Drop()),
    "hang_headers": lambda fault, model, stream: FaultPlan(before_headers=Hang()),
    "hang": lambda fault, model, stream: FaultPlan(before_headers=Hang(after_headers=True)),
    "drop_after": lambda fault, model, stream: FaultPlan(
        stop_after=fault.count, after_chunks=Drop()
    ),
    "hang_after": lambda fault, model, stream: FaultPlan(
        stop_after=fault.count, after_chunks=Hang()
    ),
    "sse_error": _sse_error,
    "slow": lambda fault, model, stream: FaultPlan(chunk_delay=fault.delay),
    "tiny": lambda fault, model, stream: FaultPlan(tiny=fault.count),
    "html": _html,
    "redirect": lambda fault, model, stream: FaultPlan(before_headers=Redirect(fault.code)),
    "bad_json": _bad_json,
    "quota_garbage": _quota_garbage,
    "sse_garbage": _sse_garbage,
    "truncated_json": _truncated_json,
    "no_usage": lambda fault, model, stream: NO_FAULT,  # the wire leaves the usage out
}

_NO_ARG_KINDS: tuple[FaultKind, ...] = (
    "drop_headers",
    "hang",
    "hang_headers",
    "quota_garbage",
    "truncated_json",
    "no_usage",
)
_COUNT_KINDS: tuple[FaultKind, ...] = ("drop_after", "hang_after", "tiny")


def parse_fault(spec: str) -> Fault:
    """Parse a SPEC such as `503`, `429 minute 0.2s` or `drop_after 3`; ValueError if bad."""
    words = spec.split()
    if not words:
        raise ValueError("empty fault spec")
    head, args = words[0].lower(), words[1:]
    text = " ".join(words)
    if head.isdigit():
        code = int(head)
        if not 400 <= code <= 599:
            raise ValueError(f"fault {text!r}: HTTP code must be 4xx or 5xx")
        if code == 429:
            return _parse_quota(text, args)
        _expect_args(text, args, 0)
        return Fault(text, "http_error", code=code)
    for kind in _NO_ARG_KINDS:
        if head == kind:
            _expect_args(text, args, 0)
            return Fault(text, kind)
    for kind in _COUNT_KINDS:
        if head == kind:
            _expect_args(text, args, 1)
            return Fault(text, kind, count=_non_negative_int(text, args[0]))
    if head == "sse_error":
        if not 1 <= len(args) <= 2:
            raise ValueError(f"fault {text!r}: expected `sse_error K [CODE]`")
        code = _non_negative_int(text, args[1]) if len(args) == 2 else 500
        return Fault(text, "sse_error", count=_non_negative_int(text, args[0]), code=code)
    if head == "slow":
        _expect_args(text, args, 1)
        return Fault(text, "slow", delay=_non_negative_int(text, args[0]) / 1000.0)
    if head == "html":
        _expect_args(text, args, 1)
        return Fault(text, "html", code=_status(text, args[0], range(200, 600)))
    if head == "redirect":
        if len(args) > 1:
            raise ValueError(f"fault {text!r}: expected `redirect [CODE]`")
        code = _status(text, args[0], REDIRECT_CODES) if args else 302
        return Fault(text, "redirect", code=code)
    if head == "bad_json":
        if not 1 <= len(args) <= 2:
            raise ValueError(f"fault {text!r}: expected `bad_json CODE [SHAPE]`")
        code = _status(text, args[0], range(200, 600))
        default = "error_list" if code >= 400 else "candidates"
        return Fault(text, "bad_json", code=code, shape=_shape(text, args[1:], default))
    if head == "sse_garbage":
        if not 1 <= len(args) <= 2:
            raise ValueError(f"fault {text!r}: expected `sse_garbage K [SHAPE]`")
        count = _non_negative_int(text, args[0])
        return Fault(text, "sse_garbage", count=count, shape=_shape(text, args[1:], "text"))
    raise ValueError(f"unknown fault {text!r}")


def _parse_quota(text: str, args: list[str]) -> Fault:
    scope = args[0].lower() if args else "minute"
    if scope not in _QUOTA_IDS or len(args) > 2:
        raise ValueError(f"fault {text!r}: expected `429 minute|day|zero [DELAY]`")
    delay = parse_duration(args[1]) if len(args) == 2 else _QUOTA_DEFAULT_DELAYS[scope]
    quota: QuotaScope = scope  # type: ignore[assignment]
    return Fault(text, "http_error", code=429, delay=delay, quota=quota)


def _expect_args(text: str, args: list[str], n: int) -> None:
    if len(args) != n:
        raise ValueError(f"fault {text!r}: expected {n} argument(s), got {len(args)}")


def _non_negative_int(text: str, value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"fault {text!r}: {value!r} is not a non-negative integer")
    return int(value)


def _status(text: str, value: str, allowed: range | frozenset[int]) -> int:
    code = _non_negative_int(text, value)
    if code not in allowed:
        raise ValueError(f"fault {text!r}: HTTP code {code} is not allowed here")
    return code


def _shape(text: str, args: list[str], default: str) -> str:
    shape = args[0].lower() if args else default
    if shape not in GARBAGE:
        raise ValueError(f"fault {text!r}: unknown SHAPE {shape!r} (one of {', '.join(GARBAGE)})")
    return shape


def parse_duration(value: str) -> float:
    """Seconds from `1s`, `0.2s`, `200ms` or a bare number of seconds."""
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError(f"bad duration {value!r} (use e.g. 1s, 0.2s or 200ms)")
    seconds = float(match.group(1))
    return seconds / 1000.0 if match.group(2) == "ms" else seconds


def format_duration(seconds: float) -> str:
    """A protobuf Duration string, as in RetryInfo.retryDelay (`13s`, `0.2s`)."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def error_body(
    code: int,
    message: str | None = None,
    *,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Gemini error JSON body; the key order puts `error` first, as the SDK expects."""
    error: dict[str, Any] = {
        "code": code,
        "message": message or _DEFAULT_MESSAGES.get(code, f"Injected fault: HTTP {code}."),
        "status": status or STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def quota_error_body(scope: QuotaScope, delay: float, model: str) -> dict[str, Any]:
    """The 429 the free tier answers with: QuotaFailure, Help and RetryInfo details."""
    limit = _QUOTA_VALUES[scope]
    retry = format_duration(delay)
    message = _QUOTA_MESSAGE.format(metric=_QUOTA_METRIC, limit=limit, model=model, retry=retry)
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": _QUOTA_METRIC,
                    "quotaId": _QUOTA_IDS[scope],
                    "quotaDimensions": {"model": model, "location": "global"},
                    "quotaValue": limit,
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry},
    ]
    return error_body(429, message, details=details)


def quota_garbage_body(model: str) -> dict[str, Any]:
    """A 429 shaped like the free tier's, but `violations` is a string and the
    `retryDelay` is not a Duration."""
    message = _QUOTA_MESSAGE.format(metric=_QUOTA_METRIC, limit="10", model=model, retry="soon")
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": "exceeded"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"},
    ]
    return error_body(429, message, details=details)


def html_page(code: int) -> bytes:
    """The kind of HTML error page a Google front end or a proxy answers with."""
    try:
        reason = http.HTTPStatus(code).phrase
    except ValueError:
        reason = "Error"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>Error {code} ({reason})!!1</title></head><body>"
        f"<p><b>{code}.</b> <ins>That's an error.</ins></p>"
        f"<p>{reason}. <ins>That's all we know.</ins></p></body></html>\n"
    ).encode()


def tiny_chunks(
    prompt_tokens: int, n: int, finish_reason: str | None = "STOP"
) -> Iterator[EngineChunk]:
    """N one-token chunks of text `x`, sharing one parts list so serialising stays cheap."""
    for k in range(1, n + 1):
        yield EngineChunk(
            _TINY_PARTS,
            {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": k,
                "totalTokenCount": prompt_tokens + k,
            },
            finish_reason if k == n else None,
        )


class FaultQueue:
    """Faults pushed by tests, consumed FIFO by later generate requests, one each."""

    def __init__(self) -> None:
        self._items: deque[tuple[Fault, str | None]] = deque()

    def push(self, faults: list[Fault], match: str | None = None) -> None:
        self._items.extend((fault, match) for fault in faults)

    def take(self, prompt: str) -> Fault | None:
        """Remove and return the first fault whose `match` is absent or in `prompt`."""
        for item in self._items:
            fault, match = item
            if match is None or match in prompt:
                self._items.remove(item)
                return fault
        return None

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
