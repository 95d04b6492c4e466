"""One contract, two stores: every test here runs on SQLite (a file) and on PostgreSQL (a
throwaway cluster) and asserts the same semantics: append-only records, one writer per
conversation, drafts and interrupted calls closed on resume, the reply cache, delete that
leaves nothing, schema versions, and `map`'s results tables."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter.batch.records import StoredRow, open_results
from agentrt_jupyter.content import BlobPart, FunctionCallPart, FunctionResponsePart, TextPart
from agentrt_jupyter.conversation import ConversationMessage
from agentrt_jupyter.errors import ConversationInUse, StoreError
from agentrt_jupyter.store import INTERRUPTED, TEAM_SCOPE
from agentrt_jupyter.stores.base import ConversationStore, ResultsStore
from agentrt_jupyter.stores.opening import open_store_at

from .store_helpers import USAGE, WHEN, answers, ledger_row, model, reply, user

Opener = Callable[..., ConversationStore]


def make_newer(location: str) -> None:
    """Mark the store as written by a future version (schema one past this one's)."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute("UPDATE agentrt.meta SET value = '999' WHERE key = 'schema_version'")
    else:
        with contextlib.closing(sqlite3.connect(location)) as db:
            db.execute("PRAGMA user_version = 999")
            db.commit()


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the store lives: a file path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def opener(location: str) -> Iterator[Opener]:
    opened: list[ConversationStore] = []

    def make(**options: Any) -> ConversationStore:
        store = open_store_at(location, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(opener: Opener) -> ConversationStore:
    return opener(holder="test")


def test_everything_written_loads_back_in_order(store: ConversationStore) -> None:
    call = FunctionCallPart("add", {"a": 1, "b": [2, 3]}, "c1", b"sig")
    written = [
        user("first", 1),
        ConversationMessage(
            "model",
            (TextPart("hmm", thought=True, thought_signature=b"t"), TextPart("calling"), call),
            1,
            WHEN,
            "complete",
            USAGE,
            "m",
            "STOP",
        ),
        answers(1, call),
        model("done", 1),
        ConversationMessage("user", (TextPart("look"), BlobPart("image/png", b"\x89PNG")), 2),
        model("a picture", 2),
    ]
    cid = store.create("nb.ipynb", "helper", {"model": "m", "temperature": 0.5})
    for message in written:
        store.append_message(cid, message)
    store.append_ledger(cid, ledger_row(1))
    store.append_ledger(cid, ledger_row(2, error="boom"))
    store.save_settings(cid, {"model": "m2"})

    loaded = store.load(cid)
    assert loaded is not None
    assert (loaded.namespace, loaded.name, loaded.settings) == (
        "nb.ipynb",
        "helper",
        {"model": "m2"},
    )
    assert loaded.conversation.messages == written
    assert loaded.conversation.ledger == [ledger_row(1), ledger_row(2, error="boom")]
    assert (loaded.conversation.turn_count, loaded.conversation.turn_seq) == (2, 2)
    assert loaded.interrupted == ()


def test_compaction_and_clear_are_markers_and_the_ledger_survives_a_clear(
    store: ConversationStore,
) -> None:
    cid = store.create("", "c", {})
    for turn in (1, 2):
        store.append_message(cid, user(f"q{turn}", turn))
        store.append_message(cid, model(f"a{turn}", turn))
        store.append_ledger(cid, ledger_row(turn))
    store.append_message(cid, ConversationMessage("summary", (TextPart("so far"),), 2))
    store.append_message(cid, user("q3", 3))
    loaded = store.load(cid)
    assert loaded is not None
    conversation = loaded.conversation
    assert conversation.compactions == [4]
    assert conversation.summary == "so far"
    assert [m.text for m in conversation.context()] == ["q3"]
    assert conversation.turn_count == 3

    store.clear(cid)
    store.append_message(cid, user("after", 4))
    loaded = store.load(cid)
    assert loaded is not None
    assert [m.text for m in loaded.conversation.messages] == ["after"]
    assert loaded.conversation.compactions == []
    assert (loaded.conversation.turn_count, loaded.conversation.turn_seq) == (1, 4)
    assert len(loaded.conversation.ledger) == 2


def test_an_empty_checkpoint_drops_the_draft_of_a_reply_started_over(
    store: ConversationStore,
) -> None:
    cid = store.create("", "retry", {})
    store.append_message(cid, user("q", 1))
    store.checkpoint(cid, model("first attempt, cut off", 1))
    store.checkpoint(cid, ConversationMessage("model", (), 1))
    loaded = store.load(cid)
    assert loaded is not None and [m.text for m in loaded.conversation.messages] == ["q"]


def test_each_start_is_its_own_conversation_and_latest_is_the_newest(
    store: ConversationStore,
) -> None:
    old = store.create("nb", "default", {})
    store.append_message(old, user("old kernel", 1))
    new = store.create("nb", "default", {})
    store.append_message(new, user("new kernel", 1))
    other_notebook = store.create("other.ipynb", "default", {})
    assert len({old, new, other_notebook}) == 3
    assert store.latest("nb", "default") == new
    assert store.latest("other.ipynb", "default") == other_notebook
    assert store.latest("nb", "nobody") is None
    old_loaded, new_loaded = store.load(old), store.load(new)
    assert old_loaded is not None and new_loaded is not None
    assert [m.text for m in old_loaded.conversation.messages] == ["old kernel"]
    assert [m.text for m in new_loaded.conversation.messages] == ["new kernel"]
    assert store.load("no-such-id") is None
    assert store.open("no-such-id") is None


def test_the_listing_counts_what_a_resume_shows(store: ConversationStore) -> None:
    first = store.create("a.ipynb", "one", {})
    store.append_message(first, user("q", 1))
    store.append_message(first, model("a", 1))
    store.append_message(first, user("q2", 2))
    store.checkpoint(first, model("partial", 2))
    second = store.create("b.ipynb", "two", {})
    store.append_message(second, user("gone", 1))
    store.clear(second)
    store.release(second)

    rows = {row.name: row for row in store.conversations()}
    assert set(rows) == {"one", "two"}
    one, two = rows["one"], rows["two"]
    assert (one.id, one.namespace, one.turns, one.messages) == (first, "a.ipynb", 2, 4)
    assert (two.turns, two.messages) == (0, 0)
    assert one.holder == store.holder and "test (pid" in one.holder
    assert two.holder is None
    assert one.size > two.size > 0
    assert one.created <= one.last_activity <= datetime.now(UTC)
    assert [r.name for r in store.conversations("b.ipynb")] == ["two"]
    assert store.conversations("nowhere") == []


def test_a_resume_closes_the_cut_reply_and_its_unanswered_calls_once(opener: Opener) -> None:
    crashed = opener(holder="crashed")
    cid = crashed.create("", "tools", {})
    crashed.append_message(cid, user("q", 1))
    call = FunctionCallPart("slow", {}, "c9")
    crashed.checkpoint(cid, model("running a tool", 1, call))
    resumed = opener(lease_timeout=0.0)
    loaded = resumed.open(cid)
    assert loaded is not None
    assert [m.status for m in loaded.conversation.messages] == [
        "complete",
        "incomplete",
        "incomplete",
    ]
    answer = loaded.conversation.messages[-1].parts[0]
    assert isinstance(answer, FunctionResponsePart) and answer.response == {"error": INTERRUPTED}
    assert loaded.interrupted == (call,)
    again = resumed.load(cid)
    assert again is not None and len(again.conversation.messages) == 3
    assert again.interrupted == ()


def test_a_live_holder_refuses_a_second_writer_until_taken_over(opener: Opener) -> None:
    first, second = opener(holder="kernel one.json"), opener(holder="kernel two")
    cid = first.create("nb", "shared", {})
    with pytest.raises(ConversationInUse) as refused:
        second.open(cid)
    assert refused.value.name == "shared"
    assert refused.value.holder == first.holder
    assert f"pid {os.getpid()}" in str(refused.value) and "kernel one.json" in str(refused.value)
    with pytest.raises(ConversationInUse):
        second.delete(cid)
    assert second.open(cid, take_over=True) is not None
    second.append_message(cid, user("mine now", 1))
    with pytest.raises(ConversationInUse) as lost:
        first.append_message(cid, user("still mine?", 1))
    assert lost.value.holder == second.holder
    assert first.heartbeat() == []  # already noticed
    assert second.heartbeat() == []
    loaded = second.load(cid)
    assert loaded is not None and [m.text for m in loaded.conversation.messages] == ["mine now"]


def test_heartbeat_reports_the_leases_this_store_lost(opener: Opener) -> None:
    first, second = opener(), opener()
    kept, taken = first.create("", "kept", {}), first.create("", "taken", {})
    second.open(taken, take_over=True)
    assert first.heartbeat() == [taken]
    first.append_message(kept, user("fine", 1))


def test_a_holder_silent_past_the_lease_timeout_is_dead(opener: Opener) -> None:
    silent, impatient = opener(), opener(lease_timeout=0.0)
    cid = silent.create("", "quiet", {})
    assert impatient.conversations()[0].holder is None
    assert impatient.open(cid) is not None
    with pytest.raises(ConversationInUse):
        silent.checkpoint(cid, model("late", 1))


def test_release_and_close_let_another_writer_in(opener: Opener) -> None:
    first, second = opener(), opener()
    released, closed = first.create("", "r", {}), first.create("", "c", {})
    first.release(released)
    assert second.open(released) is not None
    with pytest.raises(ConversationInUse):
        second.open(closed)
    first.close()
    assert second.open(closed) is not None


def test_delete_leaves_nothing_of_the_conversation(store: ConversationStore) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    keep = store.create("", "keep", {})
    cid = store.create("", "gone", {"system_instruction": secret})
    store.append_message(cid, user(secret, 1))
    store.append_ledger(cid, ledger_row(1, error=secret))
    store.checkpoint(cid, model(secret, 2))
    store.cache_put("k1", reply(secret), conversation=cid)
    assert store.delete(cid) is True
    assert store.delete(cid) is False
    assert [r.name for r in store.conversations()] == ["keep"]
    assert store.load(cid) is None and store.cache_get("k1") is None
    assert store.load(keep) is not None


def test_the_cache_returns_what_was_put_counts_hits_and_clears(store: ConversationStore) -> None:
    assert store.cache_get("missing") is None
    store.cache_put("k", reply("hello"))
    assert store.cache_get("k") == reply("hello") == store.cache_get("k")
    stats = store.cache_stats()
    assert (stats.entries, stats.hits, stats.bytes > len("hello")) == (1, 2, True)
    store.cache_put("k", reply("replaced"))
    assert store.cache_get("k") == reply("replaced")
    store.cache_clear()
    assert store.cache_stats().entries == 0


def test_the_cache_evicts_the_least_recently_used_past_its_bounds(opener: Opener) -> None:
    store = opener(cache_max_entries=3, cache_max_bytes=None)
    for key in "abc":
        store.cache_put(key, reply(key))
    store.cache_get("a")  # b is now the least recently used
    store.cache_put("d", reply("d"))
    assert [k for k in "abcd" if store.cache_get(k) is not None] == ["a", "c", "d"]
    bounded = opener(cache_max_entries=None, cache_max_bytes=1000)
    bounded.cache_clear()
    for key in "pqrstuvwxyz":
        bounded.cache_put(key, reply(key * 100))
    stats = bounded.cache_stats()
    assert 0 < stats.bytes <= 1000
    assert bounded.cache_get("z") is not None and bounded.cache_get("p") is None
    bounded.cache_put("huge", reply("x" * 2000))
    assert bounded.cache_get("huge") is None and bounded.cache_stats().entries == stats.entries


def test_a_team_cached_reply_is_apart_and_names_no_conversation(store: ConversationStore) -> None:
    cid = store.create("", "c", {})
    store.cache_put("k", reply("team"), conversation=cid, scope=TEAM_SCOPE)
    assert store.cache_get("k") is None
    assert store.cache_get("k", scope=TEAM_SCOPE) == reply("team")
    store.delete(cid)
    assert store.cache_get("k", scope=TEAM_SCOPE) == reply("team")


def test_a_value_json_cannot_hold_is_a_store_error_and_nothing_is_written(
    store: ConversationStore,
) -> None:
    cid = store.create("", "bad", {})
    bad = ConversationMessage("user", (FunctionResponsePart("f", {"x": object()}, "c"),), 1)
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        store.append_message(cid, bad)
    loaded = store.load(cid)
    assert loaded is not None and loaded.conversation.messages == []


def test_a_store_of_a_newer_schema_is_refused(location: str, opener: Opener) -> None:
    opener().close()
    make_newer(location)
    with pytest.raises(StoreError, match="newer agentrt-jupyter"):
        opener()


@pytest.fixture
def results(location: str) -> Iterator[ResultsStore]:
    opened = open_results(location)
    yield opened
    opened.close()


def test_map_rows_and_batch_jobs_are_kept(results: ResultsStore) -> None:
    row = StoredRow("answer", 10, 2, 0.5, 1, "m")
    assert results.get("run", "r1") is None
    results.put("run", "r1", row)
    results.put("run", "r1", row)
    assert results.get("run", "r1") == row and results.count("run") == 1
    results.add_job("run", "jobs/1")
    results.add_job("run", "jobs/2")
    results.close_job("jobs/1", "succeeded")
    assert results.open_jobs("run") == ["jobs/2"]
