"""Connections: a deadline for each request's headers, which aiohttp does not have.

aiohttp bounds a request head only by its keep-alive timeout (recent versions; older ones
not at all), which also bounds idle connections, so it cannot be short without closing
the idle connections a client's pool is about to reuse. Each connection's aiohttp
protocol is therefore wrapped in a `HeaderDeadline` that times only a request head in
flight: from the connection's opening, or from the first byte after the previous request,
until the app sees the request (the `track_requests` middleware). A stalled head gets a
408 and the connection is closed. After a reply that closes the connection (a refusal
whose body was never read, which aiohttp still drains for a while) the clock stays off:
no request can follow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from .faults import error_body

_BACKLOG = 4096


def _timeout_response(timeout: float) -> bytes:
    body = json.dumps(
        error_body(408, f"The request headers did not arrive within {timeout:g}s."),
        separators=(",", ":"),
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class HeaderDeadline(asyncio.Protocol):
    """One connection's aiohttp protocol, with a deadline on each request head."""

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_may_come = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_may_come and self._timer is None:
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        """The app has the request's headers: stop the clock until the request is done."""
        self._head_may_come = False
        self._disarm()

    def request_finished(self, *, reusable: bool) -> None:
        """The request is done; the next bytes start a new head if the connection stays."""
        self._head_may_come = reusable

    def _arm(self) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_timeout_response(self._timeout))
            self._transport.close()


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the connection's `HeaderDeadline` (if it has one) when a request runs."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if not isinstance(protocol, HeaderDeadline):
        return await handler(request)
    protocol.request_started()
    reusable = True
    try:
        response = await handler(request)
        reusable = response.keep_alive is not False
        return response
    finally:
        protocol.request_finished(reusable=reusable)


async def listen(
    runner: web.BaseRunner, host: str, port: int, *, header_timeout: float
) -> asyncio.Server:
    """Serve `runner` (already set up) on host:port, each connection with a header deadline."""
    handlers = runner.server
    assert handlers is not None, "runner.setup() first"

    def protocol() -> HeaderDeadline:
        return HeaderDeadline(handlers(), header_timeout)

    return await asyncio.get_running_loop().create_server(protocol, host, port, backlog=_BACKLOG)
