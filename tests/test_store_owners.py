"""On SQLite too, a user sees and resumes only their own conversations.

The user is `$JUPYTERHUB_USER`, else the OS user (`identity.current_user`). A file shared
by two users (one `$AGENTRT_HOME`, or a hub that runs every user as one OS account) keeps
them apart; conversations recorded before owners existed (schema 1) stay everyone's.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentrt_jupyter import AgentRuntime
from agentrt_jupyter.errors import AgentNotFound
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.store import SCHEMA_VERSION, Store

from .conftest import runtime_config


def test_a_conversation_is_seen_taken_and_deleted_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    with Store(path, owner="alice") as alice:
        made = alice.create("nb", "helper", {"model": "m"})
        alice.release(made)
    with Store(path, owner="bob") as bob:
        assert bob.conversations() == [] and bob.latest("nb", "helper") is None
        assert bob.load(made) is None and bob.open(made) is None
        assert bob.claim(made) is False and bob.delete(made) is False
        mine = bob.create("nb", "helper", {})
        assert [c.id for c in bob.conversations()] == [mine]
    with Store(path, owner="alice") as alice:
        assert [c.id for c in alice.conversations()] == [made]
        assert alice.latest("nb", "helper") == made
        assert alice.open(made) is not None and alice.delete(made) is True


def test_conversations_from_before_owners_stay_everyones_after_the_migration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with Store(path, owner="someone") as store:
        old = store.create("nb", "helper", {})
    with sqlite3.connect(path) as raw:  # as schema 1 wrote it
        raw.execute("ALTER TABLE conversations DROP COLUMN owner")
        raw.execute("PRAGMA user_version = 1")
    with Store(path, owner="bob") as bob:
        assert [c.id for c in bob.conversations()] == [old]
        assert bob.open(old, take_over=True) is not None
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert raw.execute("SELECT owner FROM conversations").fetchall() == [("",)]


def test_a_runtime_lists_and_resumes_only_the_hub_users_conversations(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tag: str
) -> None:
    config = runtime_config(server, store_path=tmp_path / "conversations.sqlite3")
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    alice = AgentRuntime(config)
    try:
        alice.create_agent(name="notes").chat(f"hello {tag}").result(timeout=10)
    finally:
        alice.shutdown(10.0)

    monkeypatch.setenv("JUPYTERHUB_USER", "bob")
    bob = AgentRuntime(config)
    try:
        assert bob.stored_conversations() == []
        with pytest.raises(AgentNotFound):
            bob.resume("notes")
    finally:
        bob.shutdown(10.0)

    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    again = AgentRuntime(config)
    try:
        assert again.stored_conversations() == ["notes"]
        assert again.resume("notes").turn_count() == 1
    finally:
        again.shutdown(10.0)
