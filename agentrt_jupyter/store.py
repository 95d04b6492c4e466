"""SQLite persistence: conversations and ledgers survive kernel restarts.

Used only from the runtime thread; writes go through as each message or ledger row is
recorded (WAL, autocommit), so a killed kernel loses at most the turn in flight.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from .content import part_from_json, part_to_json
from .conversation import Conversation, ConversationMessage, LedgerEntry, Usage

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
  name TEXT PRIMARY KEY, settings TEXT NOT NULL, turn_count INTEGER NOT NULL,
  turn_seq INTEGER NOT NULL, compactions TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
  agent TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL, parts TEXT NOT NULL,
  turn INTEGER NOT NULL, time TEXT NOT NULL, status TEXT NOT NULL, usage TEXT,
  model TEXT, finish_reason TEXT, PRIMARY KEY (agent, position));
CREATE TABLE IF NOT EXISTS ledger (
  agent TEXT NOT NULL, row TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_agent ON ledger (agent);
"""

STORED_SETTINGS = (
    "model", "system_instruction", "temperature", "top_p", "top_k", "max_output_tokens",
    "stop_sequences", "seed", "thinking_budget", "include_thoughts", "response_mime_type",
    "max_tool_steps", "compaction_threshold", "api_version", "base_url",
)  # fmt: skip
"""AgentConfig fields that can be stored (tools, callbacks and keys cannot)."""


def _usage_json(usage: Usage | None) -> str | None:
    return None if usage is None else json.dumps(asdict(usage))


def _usage(text: str | None) -> Usage | None:
    return None if text is None else Usage(**json.loads(text))


class Store:
    """One SQLite file of named conversations."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def exists(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM agents WHERE name=?", (name,)).fetchone() is not None

    def names(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT name FROM agents ORDER BY updated")]

    def save_agent(self, name: str, settings: dict[str, Any], conversation: Conversation) -> None:
        self._db.execute(
            "INSERT INTO agents VALUES (?,?,?,?,?,datetime('now')) ON CONFLICT(name) DO UPDATE SET"
            " settings=excluded.settings, turn_count=excluded.turn_count,"
            " turn_seq=excluded.turn_seq, compactions=excluded.compactions,"
            " updated=excluded.updated",
            (
                name, json.dumps(settings), conversation.turn_count, conversation.turn_seq,
                json.dumps(conversation.compactions),
            ),
        )  # fmt: skip

    def add_message(self, name: str, position: int, message: ConversationMessage) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                name, position, message.role, json.dumps([part_to_json(p) for p in message.parts]),
                message.turn, message.time.isoformat(), message.status, _usage_json(message.usage),
                message.model, message.finish_reason,
            ),
        )  # fmt: skip

    def add_ledger(self, name: str, entry: LedgerEntry) -> None:
        row = {f.name: getattr(entry, f.name) for f in fields(entry)}
        row["started"] = entry.started.isoformat()
        row["usage"] = asdict(entry.usage)
        self._db.execute("INSERT INTO ledger VALUES (?,?)", (name, json.dumps(row)))

    def clear_messages(self, name: str) -> None:
        self._db.execute("DELETE FROM messages WHERE agent=?", (name,))

    def delete(self, name: str) -> None:
        for table, column in (("agents", "name"), ("messages", "agent"), ("ledger", "agent")):
            self._db.execute(f"DELETE FROM {table} WHERE {column}=?", (name,))

    def load(self, name: str) -> tuple[dict[str, Any], Conversation] | None:
        row = self._db.execute(
            "SELECT settings, turn_count, turn_seq, compactions FROM agents WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            return None
        conversation = Conversation()
        conversation.turn_count, conversation.turn_seq = row[1], row[2]
        conversation.compactions = json.loads(row[3])
        for role, parts, turn, time, status, usage, model, finish in self._db.execute(
            "SELECT role, parts, turn, time, status, usage, model, finish_reason FROM messages"
            " WHERE agent=? ORDER BY position",
            (name,),
        ):
            conversation.messages.append(
                ConversationMessage(
                    role, tuple(part_from_json(p) for p in json.loads(parts)), turn,
                    datetime.fromisoformat(time), status, _usage(usage), model, finish,
                )
            )  # fmt: skip
        for (text,) in self._db.execute(
            "SELECT row FROM ledger WHERE agent=? ORDER BY rowid", (name,)
        ):
            data = json.loads(text)
            data["started"] = datetime.fromisoformat(data["started"])
            data["usage"] = Usage(**data["usage"])
            conversation.ledger.append(LedgerEntry(**data))
        return json.loads(row[0]), conversation
