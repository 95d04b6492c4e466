"""The recorder: an agent's writes reach the store, a store fault becomes the turn's typed
error once and the runtime carries on without the store; without a store, replies are
cached in memory, bounded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agentrt_jupyter import AgentConfig, AgentRuntime, FakeBackend, RuntimeConfig, TextPart
from agentrt_jupyter.conversation import ConversationMessage, Usage
from agentrt_jupyter.errors import ConversationInUse, StoreError, TurnStoreError
from agentrt_jupyter.recorder import MEMORY_CACHE_ENTRIES, NullRecorder, StoreRecorder
from agentrt_jupyter.store import CachedReply, Store

pytestmark = pytest.mark.timeout(10)
CONFIG = AgentConfig(name="scribe")


def user(text: str) -> ConversationMessage:
    return ConversationMessage("user", (TextPart(text),), 1)


def recorded(text: str) -> CachedReply:
    return CachedReply((TextPart(text),), Usage(total_tokens=5), "STOP", "m")


def test_a_store_fault_fails_the_turn_typed_once_then_the_recorder_goes_on_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "store.sqlite3")
    recorder = StoreRecorder(store)
    conversation = recorder.create("ns", "scribe", CONFIG)
    assert conversation is not None
    recorder.message(conversation, user("kept"))
    store.close()  # every write now fails
    with pytest.raises(StoreError) as raised:
        recorder.message(conversation, user("lost"))
    with caplog.at_level(logging.WARNING, logger="agentrt_jupyter"):
        error = recorder.turn_failed(raised.value)
        assert recorder.turn_failed(StoreError("again")).cause.args == ("again",)
    assert isinstance(error, TurnStoreError) and error.cause is raised.value
    assert error.path == str(tmp_path / "store.sqlite3")
    assert recorder.store is None and recorder.problem is raised.value
    assert [r.message for r in caplog.records].count(
        f"conversations are no longer stored: {raised.value}"
    ) == 1
    recorder.message(conversation, user("not stored, no error"))
    recorder.cache("k", recorded("in memory now"), conversation)
    assert recorder.cached("k") == recorded("in memory now")
    assert recorder.cache_stats()["hits"] == 1
    loaded = Store(tmp_path / "store.sqlite3").load(conversation)
    assert loaded is not None and [m.text for m in loaded.conversation.messages] == ["kept"]


def test_a_conversation_taken_over_fails_the_turn_but_keeps_the_store(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        recorder = StoreRecorder(store)
        taken = ConversationInUse("scribe", "kernel other.json")
        error = recorder.turn_failed(taken)
        assert isinstance(error, TurnStoreError) and error.cause is taken
        assert recorder.store is store and recorder.problem is None


def test_without_a_store_nothing_is_written_and_the_newest_replies_are_cached() -> None:
    recorder = NullRecorder()
    assert recorder.create("ns", "scribe", CONFIG) is None
    for number in range(MEMORY_CACHE_ENTRIES + 1):
        recorder.cache(f"k{number}", recorded(str(number)), None)
    assert recorder.cached("k0") is None
    assert recorder.cached(f"k{MEMORY_CACHE_ENTRIES}") == recorded(str(MEMORY_CACHE_ENTRIES))
    assert recorder.cache_stats()["entries"] == MEMORY_CACHE_ENTRIES
    recorder.cache_clear()
    assert recorder.cache_stats() == {"entries": 0, "bytes": 0, "hits": 1}


def test_a_named_agent_on_the_fake_backend_is_recorded_and_resumed(tmp_path: Path) -> None:
    config = RuntimeConfig(store_path=tmp_path / "store.sqlite3")
    echo = FakeBackend(lambda request: f"Echo: {request.messages[-1].text}")
    with AgentRuntime(config, backend_factory=lambda endpoint: echo) as runtime:
        runtime.create_agent(name="scribe").chat("remember this").text(timeout=5)
        runtime.disconnect("scribe")
        agent = runtime.resume("scribe")
        assert agent.chat("and this").text(timeout=5) == "Echo: and this"
        assert [m.text for m in echo.requests[-1].messages] == [
            "remember this",
            "Echo: remember this",
            "and this",
        ]
    with AgentRuntime(config, backend_factory=lambda endpoint: echo) as runtime:
        history = runtime.resume("scribe").history()
    assert [m.text for m in history][-2:] == ["and this", "Echo: and this"]
