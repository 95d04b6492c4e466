"""Figure 9: the conversation store's hot paths, on a temporary file (no server, no runtime).

- reply cache lookup (`Store.cache_get`) among 10,000 entries, hits and misses, each
  timed alone (a hit also counts itself: one small write);
- `cache_put` into a full cache (an eviction each time);
- `append_message` of a one-paragraph message, and `checkpoint` of a 10 KB partial reply
  (each its own transaction: WAL, synchronous=NORMAL);
- `open` of a 1,000-message conversation (lease, load, repair check).

Target: cache lookup < 1 ms (p95) at 10,000 entries; the rest is informational.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import dist, main, row, show

from agentrt_jupyter import ConversationMessage, TextPart, Usage
from agentrt_jupyter.store import CachedReply, Store

FIGURE = "10. Store"
ENTRIES = 10_000
USAGE = Usage(prompt_tokens=1000, candidates_tokens=200, total_tokens=1200)


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def reply(i: int) -> CachedReply:
    return CachedReply((TextPart(f"recorded reply {i} " * 40),), USAGE, "STOP", "gemini-2.5-flash")


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lookups = 500 if quick else 3000
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(Path(scratch) / "bench.sqlite3", cache_max_entries=ENTRIES)
        for i in range(ENTRIES):
            store.cache_put(f"key-{i}", reply(i))
        keys = [f"key-{random.randrange(ENTRIES)}" for _ in range(lookups)]
        hits = iter(keys)
        hit = timed(lambda: store.cache_get(next(hits)), lookups)
        miss = timed(lambda: store.cache_get("absent"), lookups)
        fresh = iter(range(ENTRIES, ENTRIES + lookups))
        put = timed(lambda: store.cache_put(f"key-{next(fresh)}", reply(0)), lookups // 5)
        entries = store.cache_stats().entries

        cid = store.create("bench", "agent", {"model": "gemini-2.5-flash"})
        message = ConversationMessage("user", (TextPart("a question of some length " * 20),), 1)
        append = timed(lambda: store.append_message(cid, message), lookups // 3)
        partial = ConversationMessage("model", (TextPart("x" * 10_000),), 1)
        checkpoint = timed(lambda: store.checkpoint(cid, partial), lookups // 3)
        store.close()

        long = Store(Path(scratch) / "long.sqlite3")
        cid = long.create("bench", "long", {})
        for turn in range(500):
            long.append_message(cid, ConversationMessage("user", (TextPart("q " * 50),), turn))
            long.append_message(cid, ConversationMessage("model", (TextPart("a " * 200),), turn))
        long.close()
        opens: list[float] = []
        for _ in range(5 if quick else 20):
            with Store(Path(scratch) / "long.sqlite3") as reader:
                start = time.perf_counter()
                reader.open(cid)
                opens.append(time.perf_counter() - start)

    rows = [
        row(FIGURE, f"cache_get hit, {ENTRIES:,} entries", show(dist(hit), "ms", 1e3, 3), "—",
            "—", "< 1 ms (p95)", dist(hit)["p95"] < 1e-3),
        row(FIGURE, f"cache_get miss, {ENTRIES:,} entries", show(dist(miss), "ms", 1e3, 3), "—",
            "—", "< 1 ms (p95)", dist(miss)["p95"] < 1e-3),
        row(FIGURE, "cache_put with eviction", show(dist(put), "ms", 1e3, 3), "—", "—", "—", None,
            f"{entries:,} entries kept"),
        row(FIGURE, "append_message", show(dist(append), "ms", 1e3, 3), "—", "—", "—", None),
        row(FIGURE, "checkpoint (10 KB reply)", show(dist(checkpoint), "ms", 1e3, 3), "—", "—",
            "—", None),
        row(FIGURE, "open, 1,000 messages", show(dist(opens), "ms", 1e3, 1), "—", "—", "—", None),
    ]  # fmt: skip
    details = {
        "cache_get_hit": dist(hit),
        "cache_get_miss": dist(miss),
        "cache_put": dist(put),
        "append_message": dist(append),
        "checkpoint": dist(checkpoint),
        "open_1000": dist(opens),
    }
    return rows, details


if __name__ == "__main__":
    main("store", __doc__, run)
