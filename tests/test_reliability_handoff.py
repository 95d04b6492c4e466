"""The hand-off to a reader thread: woken at once, then at most once per millisecond.

A sync reader (a `ChatHandle` iterated on the main thread) woken at every loop step of a
fast stream takes the GIL from the runtime thread each time (issue 16 point 9). Readers
are woken at once by the first event after a quiet spell, so time to first chunk is
unchanged, and then at most once per `WAKE_EVERY` while events stream.
"""

from __future__ import annotations

import asyncio
import time

from agentrt_jupyter.events import TextDelta
from agentrt_jupyter.handle import WAKE_EVERY, Turn


def test_a_reader_is_woken_at_once_then_at_most_once_per_millisecond() -> None:
    async def stream() -> tuple[int, int, float]:
        turn = Turn("reader", (), "model")
        wakes = 0

        def woken() -> None:
            nonlocal wakes
            wakes += 1
            turn.add_waiter(woken)

        turn.add_waiter(woken)
        turn.publish(TextDelta("first"))
        await asyncio.sleep(0)
        first = wakes
        began = time.monotonic()
        for _ in range(2_000):  # one event per loop step, as a lone fast stream
            turn.publish(TextDelta("x"))
            await asyncio.sleep(0)
        elapsed = time.monotonic() - began
        await asyncio.sleep(2 * WAKE_EVERY)
        return first, wakes, elapsed

    first, wakes, elapsed = asyncio.run(stream())
    assert first == 1, "the first event did not wake the reader in its own loop step"
    assert wakes <= 2 + elapsed / WAKE_EVERY, f"{wakes} wakes in {elapsed * 1000:.1f} ms"
    assert wakes >= 2, "the reader was not woken again while events streamed"
