"""One HTTP attempt streamed in a pump task: cancelling the task closes the socket.

The pump applies each chunk itself (no queue and no task switch per chunk). The SDK
parses every buffered chunk in one task step, so the pump yields to the loop after each
chunk while other streams run (fairness: a new turn's first chunk is not starved), and
at least every `YIELD_EVERY` seconds otherwise (a pending cancel is seen at once). A
re-arming watchdog, not a timeout per chunk, cancels a stalled stream.
"""

from __future__ import annotations

import asyncio
import time

from ..errors import StreamBroken
from .base import Backend, CallListener, ModelRequest, Reply

YIELD_EVERY = 0.005
"""A lone stream parsing buffered chunks yields to the loop at least this often (seconds)."""


class StreamPacer:
    """The model streams in flight on one loop: above one, each pump yields per chunk."""

    __slots__ = ("running",)

    def __init__(self) -> None:
        self.running = 0


async def pump(
    backend: Backend,
    request: ModelRequest,
    reply: Reply,
    listener: CallListener,
    *,
    idle_timeout: float,
    pacer: StreamPacer,
) -> None:
    """Stream one attempt into `reply`; `StreamBroken` if no chunk came for `idle_timeout`."""
    loop = asyncio.get_running_loop()
    last_chunk = loop.time()
    stalled = False

    async def run() -> None:
        nonlocal last_chunk
        yielded = last_chunk
        async for chunk in backend.stream(request):
            now = last_chunk = loop.time()
            if reply.first_chunk_at is None:
                reply.first_chunk_at = time.monotonic()
            reply.add(chunk)
            listener.on_chunk(chunk, reply)
            if pacer.running > 1 or now - yielded > YIELD_EVERY:
                await asyncio.sleep(0)
                yielded = loop.time()

    def watchdog() -> None:
        nonlocal stalled
        left = last_chunk + idle_timeout - loop.time()
        if left > 0:
            alarm[0] = loop.call_later(left, watchdog)
        else:
            stalled = True
            task.cancel()

    pacer.running += 1
    task = asyncio.create_task(run(), name="pump")
    alarm = [loop.call_later(idle_timeout, watchdog)]
    try:
        await asyncio.wait([task])
        if stalled:
            raise StreamBroken(
                f"no data from the model for {idle_timeout:g} s (idle_chunk_timeout)"
            )
        task.result()
    finally:
        pacer.running -= 1
        alarm[0].cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: never "Task exception was never retrieved"
