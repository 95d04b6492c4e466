"""Scripted faults: the failures a real Gemini endpoint produces, on demand.

A fault is written as a short SPEC string, the same in a prompt (`@@fault SPEC`) and in
the control queue (`POST /_agentrt/faults`). `parse_fault` turns it into a `Fault`;
the HTTP layer applies it around any engine. The error bodies copy what the real
service sends (see notes/gemini-wire.md), so the SDK raises the same exceptions with
the same `details`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
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
]

STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
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
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")

_NO_ARG_KINDS: dict[str, FaultKind] = {
    "drop_headers": "drop_headers",
    "hang": "hang",
    "hang_headers": "hang_headers",
}
_COUNT_KINDS: dict[str, FaultKind] = {
    "drop_after": "drop_after",
    "hang_after": "hang_after",
    "tiny": "tiny",
}
_TINY_PARTS: list[dict[str, Any]] = [{"text": "x"}]


@dataclass(frozen=True)
class Fault:
    """One parsed fault SPEC.

    `count` is K for the `*_after` and `sse_error` kinds and N for `tiny`; `delay` is
    in seconds (`slow`, and the 429 retry delay); `code` is the HTTP or SSE error code.
    """

    spec: str
    kind: FaultKind
    count: int = 0
    delay: float = 0.0
    code: int = 0
    quota: Literal["minute", "day", "zero"] | None = None

    @property
    def stops_after(self) -> int | None:
        """How many chunks go out before a mid-stream fault strikes, if it is one."""
        if self.kind in ("drop_after", "sse_error", "hang_after"):
            return self.count
        return None

    def error_body(self, model: str) -> dict[str, Any]:
        """The Gemini error JSON for an `http_error` or `sse_error` fault."""
        if self.quota is not None:
            return quota_error_body(self.quota, self.delay, model)
        return error_body(self.code)


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
    if (kind := _NO_ARG_KINDS.get(head)) is not None:
        _expect_args(text, args, 0)
        return Fault(text, kind)
    if (kind := _COUNT_KINDS.get(head)) is not None:
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
    raise ValueError(f"unknown fault {text!r}")


def _parse_quota(text: str, args: list[str]) -> Fault:
    scope = args[0].lower() if args else "minute"
    if scope not in _QUOTA_IDS or len(args) > 2:
        raise ValueError(f"fault {text!r}: expected `429 minute|day|zero [DELAY]`")
    delay = parse_duration(args[1]) if len(args) == 2 else _QUOTA_DEFAULT_DELAYS[scope]
    quota: Literal["minute", "day", "zero"] = scope  # type: ignore[assignment]
    return Fault(text, "http_error", code=429, delay=delay, quota=quota)


def _expect_args(text: str, args: list[str], n: int) -> None:
    if len(args) != n:
        raise ValueError(f"fault {text!r}: expected {n} argument(s), got {len(args)}")


def _non_negative_int(text: str, value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"fault {text!r}: {value!r} is not a non-negative integer")
    return int(value)


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


def quota_error_body(
    scope: Literal["minute", "day", "zero"], delay: float, model: str
) -> dict[str, Any]:
    """The 429 the free tier answers with: QuotaFailure, Help and RetryInfo details."""
    limit = _QUOTA_VALUES[scope]
    retry = format_duration(delay)
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, head to: "
        "https://ai.google.dev/gemini-api/docs/rate-limits. "
        "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
        f"* Quota exceeded for metric: {_QUOTA_METRIC}, limit: {limit}, model: {model}\n"
        f"Please retry in {retry}."
    )
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
