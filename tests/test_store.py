"""The SQLite store on its own: what only a file has (raw rows, damage, threads), crash
recovery, every way the file can be unusable, and the migration from the unversioned store.
What both stores keep alike (records, leases, the reply cache) is tests/test_store_contract.py.

Crashes are real: writer processes are killed with SIGKILL mid-write; faults are real
files (random bytes, truncated, read-only, locked by another connection, a full tmpfs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt_jupyter.backends.gemini import wire_contents
from agentrt_jupyter.content import (
    FunctionCallPart,
    FunctionResponsePart,
    TextPart,
    part_from_json,
)
from agentrt_jupyter.conversation import (
    ConversationMessage,
    unanswered_calls,
)
from agentrt_jupyter.errors import StoreError
from agentrt_jupyter.store import (
    DEFAULT_NAMESPACE,
    INTERRUPTED,
    SCHEMA_VERSION,
    CachedReply,
    Store,
)

from .conftest import assert_valid_conversation
from .store_helpers import USAGE, answers, ledger_row, model, user

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent


def sendable(messages: list[ConversationMessage], turn: int = 99) -> None:
    """What the agent sends next (these messages plus a new question) is valid for Gemini."""
    assert_valid_conversation(wire_contents([*messages, user("next question", turn)]))


def fds_on(path: Path) -> int:
    """How many of this process's file descriptors point at the store or its -wal/-shm."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                count += 1
    return count


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store(path, holder="test") as opened:
        yield opened


# -- one writer ---------------------------------------------------------------------------


def test_settings_are_appended_only_when_they_change(store: Store, path: Path) -> None:
    cid = store.create("", "s", {"model": "m"})
    store.save_settings(cid, {"model": "m"})
    store.save_settings(cid, {"model": "m2"})
    with contextlib.closing(sqlite3.connect(path)) as raw:
        kinds = [k for (k,) in raw.execute("SELECT kind FROM records ORDER BY seq")]
    assert kinds == ["settings", "settings"]


def test_a_value_json_cannot_hold_is_a_store_error_and_nothing_is_written(store: Store) -> None:
    cid = store.create("", "bad", {})
    bad = ConversationMessage("user", (FunctionResponsePart("f", {"x": object()}, "c"),), 1)
    with pytest.raises(StoreError, match="not JSON-serialisable") as raised:
        store.append_message(cid, bad)
    assert raised.value.path == str(store.path)
    loaded = store.load(cid)
    assert loaded is not None and loaded.conversation.messages == []
    store.append_message(cid, user("still works", 1))


def test_a_damaged_record_is_a_store_error_naming_the_file(store: Store, path: Path) -> None:
    cid = store.create("", "dmg", {})
    store.append_message(cid, user("fine", 1))
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute(
            'UPDATE records SET data = \'{"role": "user", "parts": [\' WHERE kind = \'message\''
        )
    with pytest.raises(StoreError, match="cannot be read") as raised:
        store.load(cid)
    assert raised.value.path == str(path)
    assert "move or delete the file" in str(raised.value)


def test_the_store_built_on_one_thread_serves_another(path: Path) -> None:
    built: list[Store] = []
    thread = threading.Thread(target=lambda: built.append(Store(path)))
    thread.start()
    thread.join()
    with built[0] as store:
        cid = store.create("", "t", {})
        store.append_message(cid, user("from the main thread", 1))
        assert store.latest("", "t") == cid


def test_a_closed_store_says_so(path: Path) -> None:
    store = Store(path)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.conversations()


# -- crashes and interrupted calls --------------------------------------------------------


def test_an_unanswered_call_is_closed_as_interrupted_once_and_persisted(path: Path) -> None:
    call = FunctionCallPart("rm", {"path": "x"}, "c1")
    crashed = Store(path)
    cid = crashed.create("", "tools", {})
    crashed.append_message(cid, user("delete x", 1))
    crashed.append_message(cid, model("", 1, call))
    with Store(path) as resumed:
        loaded = resumed.open(cid, take_over=True)
        assert loaded is not None
        messages = loaded.conversation.messages
        assert loaded.interrupted == (call,)
        assert messages[-1].parts == (FunctionResponsePart("rm", {"error": INTERRUPTED}, "c1"),)
        assert messages[-1].turn == 1
        sendable(messages)
        again = resumed.open(cid)
        assert again is not None
        assert again.interrupted == ()
        assert again.conversation.messages == messages
    crashed.close()


def test_the_store_repairs_a_call_left_unanswered_mid_conversation_in_memory() -> None:
    """Only an unversioned store could hold this (two kernels overwrote each other)."""
    call = FunctionCallPart("f", {}, "mid")
    messages = [user("q", 1), model("", 1, call), user("other kernel's question", 2)]
    messages += [model("answer", 2)]
    assert unanswered_calls(messages) == [(2, [call])]
    assert unanswered_calls([user("q", 1), model("", 1, call), answers(1, call)]) == []


WRITER = """
import sys
from agentrt_jupyter.content import FunctionCallPart, TextPart
from agentrt_jupyter.conversation import ConversationMessage
from agentrt_jupyter.store import Store

store = Store(sys.argv[1], holder="writer")
cid = store.create("nb", "default", {{}})
print(cid, flush=True)
{body}
"""


class Writer:
    """A process writing one conversation: WRITER with `body`, talking over pipes."""

    def __init__(self, path: Path, body: str) -> None:
        script = WRITER.format(body=textwrap.dedent(body))
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.conversation = self.read()

    def read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n")
        self.process.stdin.flush()

    def finish(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL, and reap it (a zombie's pid still answers signals)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


def test_two_processes_alternating_on_one_name_lose_nothing(path: Path) -> None:
    body = """
    for line in sys.stdin:
        n = int(line)
        store.append_message(cid, ConversationMessage("user", (TextPart(f"q{n}"),), n))
        store.append_message(cid, ConversationMessage("model", (TextPart(f"a{n}"),), n))
        print(n, flush=True)
    """
    writers = [Writer(path, body), Writer(path, body)]
    ids = [w.conversation for w in writers]
    try:
        for n in range(1, 11):
            for w in writers:
                w.send(str(n))
                assert w.read() == str(n)
        assert [w.finish() for w in writers] == [0, 0]
    finally:
        for w in writers:
            w.kill()
    with Store(path) as store:
        assert len(set(ids)) == 2
        listing = store.conversations("nb")
        assert sorted(r.id for r in listing) == sorted(ids)
        assert all(r.holder is None for r in listing)  # both released on exit
        for cid in ids:
            loaded = store.load(cid)
            assert loaded is not None
            expected = [t for n in range(1, 11) for t in (f"q{n}", f"a{n}")]
            assert [m.text for m in loaded.conversation.messages] == expected


def test_a_writer_killed_mid_checkpoint_loses_only_the_unsaved_tail(path: Path) -> None:
    body = """
    store.append_message(cid, ConversationMessage("user", (TextPart("q1"),), 1))
    store.append_message(cid, ConversationMessage("model", (TextPart("a1"),), 1))
    store.append_message(cid, ConversationMessage("user", (TextPart("q2"),), 2))
    words = []
    while True:  # stream as fast as possible: the kill lands during some checkpoint
        words.append(f"w{len(words)}")
        partial = ConversationMessage("model", (TextPart(" ".join(words)),), 2)
        store.checkpoint(cid, partial)
        print(len(words), flush=True)
    """
    writer = Writer(path, body)
    cid = writer.conversation
    try:
        saved = 0
        while saved < 50:
            saved = int(writer.read())
    finally:
        writer.kill()
    with Store(path) as store:
        assert store.conversations()[0].holder is None  # its pid is gone: dead at once
        loaded = store.open(cid)  # no take_over needed
        assert loaded is not None
        messages = loaded.conversation.messages
        assert [m.text for m in messages[:3]] == ["q1", "a1", "q2"]
        partial = messages[3]
        assert (partial.role, partial.status, partial.turn) == ("model", "incomplete", 2)
        words = partial.text.split()
        assert len(words) >= saved
        assert words == [f"w{i}" for i in range(len(words))]
        assert len(messages) == 4
        sendable(messages)
        assert store.conversations()[0].holder == store.holder
    with Store(path) as again:  # the partial reply was appended for good, once
        reloaded = again.load(cid)
        assert reloaded is not None and reloaded.conversation.messages == messages


def test_a_writer_killed_while_a_tool_runs_gets_its_call_answered(path: Path) -> None:
    body = """
    store.append_message(cid, ConversationMessage("user", (TextPart("run it"),), 1))
    partial = ConversationMessage(
        "model", (TextPart("running"), FunctionCallPart("slow", {}, "c9")), 1
    )
    store.checkpoint(cid, partial)
    print("tool running", flush=True)
    sys.stdin.readline()
    """
    writer = Writer(path, body)
    cid = writer.conversation
    try:
        assert writer.read() == "tool running"
    finally:
        writer.kill()
    with Store(path) as store:
        loaded = store.open(cid)
        assert loaded is not None
        assert [c.id for c in loaded.interrupted] == ["c9"]
        messages = loaded.conversation.messages
        assert [(m.role, m.status) for m in messages] == [
            ("user", "complete"),
            ("model", "incomplete"),
            ("user", "incomplete"),
        ]
        sendable(messages)


TURN = st.tuples(
    st.integers(0, 3),  # checkpoints before the reply completes
    st.lists(st.integers(0, 2), max_size=2),  # tool steps: calls per step
)


@settings(max_examples=40, deadline=None)
@given(turns=st.lists(TURN, min_size=1, max_size=4), cuts=st.lists(st.integers(0, 40), max_size=3))
def test_whatever_point_a_writer_dies_at_what_it_sends_next_is_valid(
    turns: list[tuple[int, list[int]]], cuts: list[int]
) -> None:
    """Writes as the agent makes them; a crash after any write; resume at the next turn."""
    ops: list[tuple[str, ConversationMessage]] = []
    starts: list[int] = []
    for turn, (checkpoints, steps) in enumerate(turns, start=1):
        starts.append(len(ops))
        ops.append(("append", user(f"q{turn}", turn)))
        for step, count in enumerate([*steps, 0]):
            calls = [FunctionCallPart("f", {"n": i}, f"t{turn}s{step}c{i}") for i in range(count)]
            for k in range(checkpoints):
                ops.append(("checkpoint", model(f"partial {k}", turn, *calls[: k % 2])))
            ops.append(("append", model(f"reply {turn}.{step}", turn, *calls)))
            if calls:
                ops.append(("append", answers(turn, *calls)))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "s.sqlite3"
        writer = Store(path)
        cid = writer.create("", "p", {})
        writers = [writer]
        expected: list[ConversationMessage] = []  # all but the "interrupted" answers
        done = 0
        for cut in [*sorted(cuts), len(ops)]:
            draft: ConversationMessage | None = None
            for kind, message in ops[done:cut]:
                if kind == "append":
                    writer.append_message(cid, message)
                    expected.append(message)
                    draft = None
                else:
                    writer.checkpoint(cid, message)
                    draft = message
            if draft is not None:
                expected.append(replace(draft, status="incomplete"))
            writer = Store(path)  # the previous writer died after op `cut`; this one takes over
            writers.append(writer)
            loaded = writer.open(cid, take_over=True)
            assert loaded is not None
            sendable(loaded.conversation.context())
            answered = [m for m in loaded.conversation.messages if m not in expected]
            assert [m for m in loaded.conversation.messages if m in expected] == expected
            assert all(p.response == {"error": INTERRUPTED} for m in answered for p in m.parts)
            done = next((s for s in starts if s >= cut), len(ops))  # the agent's next turn
        for opened in writers:
            opened.close()


# -- delete -----------------------------------------------------------------------------


def test_delete_leaves_no_trace_of_the_text_in_the_file(path: Path) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    with Store(path) as store:
        keep = store.create("", "keep", {})
        store.append_message(keep, user("nothing to hide " * 50, 1))
        cid = store.create("", f"name {secret}", {"system_instruction": secret})
        for turn in range(1, 30):
            store.append_message(cid, user(f"{secret} question {turn} " * 20, turn))
            store.append_message(cid, model(f"{secret} answer", turn))
            store.append_ledger(cid, ledger_row(turn, error=secret))
        store.checkpoint(cid, model(f"{secret} streaming", 30))
        store.cache_put(
            "k1", CachedReply((TextPart(secret),), USAGE, "STOP", "m"), conversation=cid
        )
        files = [path, path.with_name(path.name + "-wal")]
        assert any(secret.encode() in f.read_bytes() for f in files if f.exists())

        assert store.delete(cid) is True
        assert store.delete(cid) is False
        for f in files:
            assert not f.exists() or secret.encode() not in f.read_bytes(), f
        assert [r.name for r in store.conversations()] == ["keep"]
        assert store.cache_get("k1") is None
        assert store.load(keep) is not None


# -- the reply cache --------------------------------------------------------------------


def test_a_lookup_among_10000_entries_searches_the_key_index(store: Store, path: Path) -> None:
    """The timing is bench/bench_store.py's; here: the plan that makes it fast, at size."""
    data = json.dumps({"parts": [{"text": "t"}], "usage": {}, "finish_reason": None, "model": "m"})
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.executemany(
            "INSERT INTO replies (key, bytes, used, data) VALUES (?, 10, ?, ?)",
            ((f"key{i}", i, data) for i in range(10_000)),
        )
        plan = " ".join(
            str(row[-1])
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT data FROM replies WHERE key = ?", ("x",)
            )
        )
    assert "USING INDEX" in plan and "key=?" in plan, plan
    assert store.cache_get("key9999") is not None
    assert store.cache_stats().entries == 10_000


# -- the file cannot be used ------------------------------------------------------------


def assert_clear_store_error(error: StoreError, path: Path, *words: str) -> None:
    assert error.path == str(path)
    text = str(error)
    assert str(path) in text
    assert "store_path=None" in text and "AGENTRT_HOME" in text
    for word in words:
        assert word in text, text


def written_store(path: Path) -> None:
    with Store(path) as store:
        cid = store.create("", "x", {})
        for turn in range(40):
            store.append_message(cid, user("some text " * 40, turn))


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("random bytes", ("corrupt",)),
        ("a text file", ("corrupt",)),
        ("truncated", ("corrupt",)),
        ("newer schema", ("newer agentrt-jupyter", f"reads up to {SCHEMA_VERSION}")),
        ("another program's database", ("something else",)),
    ],
)
def test_an_unreadable_file_is_one_clear_store_error(
    path: Path, damage: str, words: tuple[str, ...]
) -> None:
    if damage == "random bytes":
        path.write_bytes(os.urandom(16384))
    elif damage == "a text file":
        path.write_text("notes\n" * 500)
    elif damage == "truncated":
        written_store(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "newer schema":
        written_store(path)
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute("CREATE TABLE photos (id INTEGER)")
    before = path.read_bytes()
    with pytest.raises(StoreError) as raised:
        Store(path)
    assert_clear_store_error(raised.value, path, *words)
    assert fds_on(path) == 0
    assert path.read_bytes() == before  # never written to


@contextlib.contextmanager
def read_only(target: Path) -> Iterator[None]:
    """Make a file or directory read-only, for root too (the immutable attribute)."""
    if os.geteuid() != 0:
        mode = target.stat().st_mode
        target.chmod(mode & 0o555)
        try:
            yield
        finally:
            target.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)


def test_a_read_only_file_is_a_store_error(path: Path) -> None:
    written_store(path)
    with read_only(path), pytest.raises(StoreError) as raised:
        Store(path)
    assert_clear_store_error(raised.value, path, "read-only", "writable")
    assert fds_on(path) == 0


@pytest.mark.parametrize("existing", [True, False], ids=["existing file", "new file"])
def test_a_read_only_directory_is_a_store_error(tmp_path: Path, existing: bool) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "store.sqlite3"
    if existing:
        written_store(path)
    with read_only(folder), pytest.raises(StoreError) as raised:
        Store(path)
    assert_clear_store_error(raised.value, path, "writable")
    assert fds_on(path) == 0


def test_a_lock_met_while_opening_is_tried_again_not_a_lost_store(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels starting together can meet SQLITE_BUSY without SQLite's busy wait (one
    failed that way in CI): opening tries again within the timeout instead of running
    without a store."""
    written_store(path)
    prepare, calls = Store._prepare, []

    def busy_once(self: Store, db: sqlite3.Connection) -> bool:
        calls.append(db)
        if len(calls) == 1:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = 5  # type: ignore[attr-defined]  # SQLITE_BUSY
            raise busy
        return prepare(self, db)

    monkeypatch.setattr(Store, "_prepare", busy_once)
    with Store(path, busy_timeout=1.0) as store:
        assert len(calls) == 2 and store.conversations()


def test_a_store_locked_past_the_timeout_is_a_store_error(path: Path) -> None:
    written_store(path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError) as raised:
            Store(path, busy_timeout=0.1)
        assert_clear_store_error(raised.value, path, "locked for more than 0.1 s")
        assert raised.value.locked
        other.execute("ROLLBACK")
        store = Store(path, busy_timeout=0.1)
        cid = store.create("", "y", {})
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked") as raised:
            store.append_message(cid, user("blocked", 1))
        assert raised.value.path == str(path)
        other.execute("ROLLBACK")
    store.append_message(cid, user("unblocked", 1))  # no transaction was left open
    loaded = store.load(cid)
    assert loaded is not None and [m.text for m in loaded.conversation.messages] == ["unblocked"]
    store.close()


def fill(store: Store, cid: str) -> StoreError:
    for turn in range(10_000):
        try:
            store.append_message(cid, user(os.urandom(2000).hex(), turn))
        except StoreError as full:
            return full
    raise AssertionError("never filled up")


def test_a_full_disk_is_a_store_error_and_what_was_written_stays(tiny_tmpfs: Path) -> None:
    path = tiny_tmpfs / "store.sqlite3"
    with Store(path) as store:
        cid = store.create("", "big", {})
        error = fill(store, cid)
        assert_clear_store_error(error, path, "disk is full")
        kept = store.conversations()[0].messages
        assert kept > 0
    with Store(path) as reopened:
        loaded = reopened.load(cid)
        assert loaded is not None and len(loaded.conversation.messages) == kept


def test_a_full_database_is_a_store_error(store: Store) -> None:
    """SQLITE_FULL without a small disk: cap the file's page count on this connection."""
    cid = store.create("", "big", {})
    assert store._db is not None
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 8}")
    assert_clear_store_error(fill(store, cid), store.path, "disk is full")
    store.cache_stats()  # still usable for reading


# -- the unversioned store --------------------------------------------------------------

V0_EXPECTED = {  # per name: roles in order, ledger rows, (turn_count, turn_seq)
    "keeper": (["user", "model"] * 2, 2, (2, 2)),
    "tools": (["user", "model", "user", "model"], 2, (1, 1)),
    "crashed": (["user", "model", "user", "model"], 2, (2, 2)),
    "compacted": (["user", "model", "user", "model", "summary", "user", "model"], 4, (3, 3)),
    "cleared": (["user", "model"], 2, (1, 2)),
}


def test_a_v0_store_is_migrated_and_every_message_and_ledger_row_loads(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    shutil.copy(FIXTURES / "store_v0.sqlite3", path)
    with contextlib.closing(sqlite3.connect(FIXTURES / "store_v0.sqlite3")) as old:
        old_messages = {
            name: [(role, json.loads(parts)) for _, role, parts in rows]
            for name, rows in _grouped(
                old.execute(
                    "SELECT agent, position, role, parts FROM messages ORDER BY agent, position"
                )
            ).items()
        }
        old_ledger = _grouped(old.execute("SELECT agent, rowid, row FROM ledger ORDER BY rowid"))
        old_settings = dict(old.execute("SELECT name, settings FROM agents").fetchall())
    assert set(old_messages) == set(V0_EXPECTED)

    with Store(path) as store:
        listing = store.conversations(DEFAULT_NAMESPACE)
        assert sorted(r.name for r in listing) == sorted(V0_EXPECTED)
        for row in listing:
            loaded = store.open(row.id)
            assert loaded is not None
            conversation = loaded.conversation
            roles, ledger_rows, counts = V0_EXPECTED[row.name]
            old_rows = old_messages[row.name]
            stored = conversation.messages[: len(old_rows)]
            assert [m.role for m in stored] == roles == [r for r, _ in old_rows]
            assert [m.parts for m in stored] == [
                tuple(part_from_json(p) for p in parts) for _, parts in old_rows
            ]
            assert len(conversation.ledger) == ledger_rows == len(old_ledger[row.name])
            assert [e.usage.total_tokens for e in conversation.ledger] == [
                json.loads(text)["usage"]["total_tokens"] for _, text in old_ledger[row.name]
            ]
            assert (conversation.turn_count, conversation.turn_seq) == counts
            assert loaded.settings == json.loads(old_settings[row.name])
            sendable(conversation.context())
        compacted = store.open(store.latest(DEFAULT_NAMESPACE, "compacted") or "")
        assert compacted is not None and compacted.conversation.compactions == [4]
        crashed = store.load(store.latest(DEFAULT_NAMESPACE, "crashed") or "")
        assert crashed is not None
        assert crashed.conversation.messages[-1].parts[0] == FunctionResponsePart(
            "rm", {"error": INTERRUPTED}, "call-rm"
        )
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {t for (t,) in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not tables & {"agents", "messages", "ledger"}
    with Store(path) as again:  # migrated once: opening again changes nothing
        assert len(again.conversations()) == len(V0_EXPECTED)


def _grouped(rows: Any) -> dict[str, list[tuple[Any, ...]]]:
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for name, *rest in rows:
        grouped.setdefault(name, []).append(tuple(rest))
    return grouped
