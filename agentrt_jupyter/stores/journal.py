"""A conversation as both stores keep it, and what they do with it alike.

The records' JSON forms, how a load is assembled from the rows (`assemble`), and
`JournalStore`, the half of a conversation store that is the same in every dialect:
making, listing, loading, `open`/`claim`, `delete` and the writes under a lease, written
once over each store's SQL (the SQLite `store.Store`, the PostgreSQL
`stores.pgstore.PgStore`), so that both keep the same semantics.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeVar

from ..content import FunctionCallPart, FunctionResponsePart, part_from_json, part_to_json
from ..conversation import (
    Conversation,
    ConversationMessage,
    LedgerEntry,
    Usage,
    unanswered_calls,
)
from .leases import Leases

INTERRUPTED = (
    "interrupted: the call's result was never recorded (the kernel stopped, or another one "
    "took the conversation over); it may or may not have run"
)
"""The error a resumed conversation answers its unanswered function calls with."""


_ROLES = frozenset({"user", "model", "summary"})
_STATUSES = frozenset({"complete", "cancelled", "incomplete", "error"})


CONVERSATION_ROWS = (
    ("records", "conversation"), ("drafts", "conversation"), ("leases", "conversation"),
    ("replies", "conversation"), ("conversations", "id"),
)  # fmt: skip
"""Every table holding a conversation's rows, and the column naming it: what `delete` erases."""

Conn = TypeVar("Conn")
"""A store's connection type (sqlite3's, psycopg's)."""


@dataclass(frozen=True, slots=True)
class StoredConversation:
    """One row of `Store.conversations()`.

    `turns` and `messages` count what `open` would show (since the last clear; a reply cut
    off mid-stream counts as a message); `size` is the bytes of JSON text the conversation
    keeps in the file (all its records, cleared ones included: what `delete` frees).
    `holder` describes the live writer, None when nobody holds it.
    """

    id: str
    namespace: str
    name: str
    turns: int
    messages: int
    size: int
    created: datetime
    last_activity: datetime
    holder: str | None


@dataclass(frozen=True, slots=True)
class LoadedConversation:
    """A stored conversation as `open`/`load` return it: ready to continue.

    `interrupted` lists the function calls this load answered with an "interrupted" error
    (they had no response: the kernel died or was taken over while they ran).
    """

    id: str
    namespace: str
    name: str
    settings: dict[str, Any]
    conversation: Conversation
    interrupted: tuple[FunctionCallPart, ...]


class _Unstorable(TypeError):
    """A value given to the store that JSON cannot hold (the caller's, not the file's)."""


def _dumps(value: object) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise _Unstorable(str(exc)) from exc


def _timestamp(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _message_json(message: ConversationMessage) -> str:
    return _dumps(
        {
            "role": message.role,
            "turn": message.turn,
            "parts": [part_to_json(p) for p in message.parts],
            "time": message.time.isoformat(),
            "status": message.status,
            "usage": None if message.usage is None else asdict(message.usage),
            "model": message.model,
            "finish_reason": message.finish_reason,
        }
    )


def _message(text: str) -> ConversationMessage:
    data = json.loads(text)
    if data["role"] not in _ROLES or data["status"] not in _STATUSES:
        raise ValueError(f"unknown role {data['role']!r} or status {data['status']!r}")
    return ConversationMessage(
        data["role"],
        tuple(part_from_json(p) for p in data["parts"]),
        int(data["turn"]),
        datetime.fromisoformat(data["time"]),
        data["status"],
        None if data["usage"] is None else Usage(**data["usage"]),
        data["model"],
        data["finish_reason"],
    )


def _ledger_json(entry: LedgerEntry) -> str:
    row = {f.name: getattr(entry, f.name) for f in fields(entry)}
    row["started"] = entry.started.isoformat()
    row["usage"] = asdict(entry.usage)
    return _dumps(row)


def _ledger_entry(text: str) -> LedgerEntry:
    data = json.loads(text)
    data["started"] = datetime.fromisoformat(data["started"])
    data["usage"] = Usage(**data["usage"])
    return LedgerEntry(**data)


def _interrupted(turn: int, calls: list[FunctionCallPart]) -> ConversationMessage:
    responses = tuple(FunctionResponsePart(c.name, {"error": INTERRUPTED}, c.id) for c in calls)
    return ConversationMessage("user", responses, turn, status="incomplete")


class ConversationRows(NamedTuple):
    """What a store reads of one conversation for `assemble` (the draft as stored)."""

    namespace: str
    name: str
    messages: list[ConversationMessage]
    ledger: list[LedgerEntry]
    draft: str | None
    turn_seq: int


class JournalStore(ABC, Generic[Conn]):
    """What every store does alike: making, listing and loading conversations, `open`/`claim`
    and the writes that need the lease, in terms of each store's SQL (the abstract methods,
    on its connection type `Conn`), so that SQLite and PostgreSQL keep the same semantics."""

    _leases: Leases

    def create(self, namespace: str, name: str, settings: Mapping[str, Any]) -> str:
        """Start a new conversation (a new id, leased to this store) and return its id."""
        conversation_id = secrets.token_hex(8)
        with self._write(f"create conversation {name!r}") as conn:
            data = _dumps(dict(settings))
            now = time.time()
            self._insert_conversation(conn, conversation_id, namespace, name, now)
            self._append(conn, conversation_id, "settings", data)
            self._lease(conn, conversation_id, now)
        self._leases.held[conversation_id] = name
        return conversation_id

    def conversations(self, namespace: str | None = None) -> list[StoredConversation]:
        """Every stored conversation (of one namespace, if given), oldest first."""
        now = time.time()
        with self._boundary("list the stored conversations") as conn:
            rows = self._listing(conn, namespace)
        listing = []
        for cid, ns, name, created, messages, turns, size, last, *lease in rows:
            listing.append(
                StoredConversation(
                    id=cid,
                    namespace=ns,
                    name=name,
                    turns=int(turns),
                    messages=int(messages),
                    size=int(size),
                    created=_timestamp(created),
                    last_activity=_timestamp(float(last)),
                    holder=self._leases.live_holder(lease, now),
                )
            )
        return listing

    @property
    def held(self) -> tuple[str, ...]:
        """The ids of the conversations this store holds the lease of."""
        return tuple(self._leases.held)

    def open(self, conversation_id: str, *, take_over: bool = False) -> LoadedConversation | None:
        """Take the conversation's lease and load it, to continue writing it.

        A live holder elsewhere gives `ConversationInUse` unless `take_over`; a dead one is
        taken over at once. An unfinished reply is appended as an `incomplete` model
        message, and calls with no response are answered with an "interrupted" error
        (appended too), so what is sent next is valid. None if there is no such id.
        """
        with self._write(f"open conversation {conversation_id}") as conn:
            name = self._locked_name(conn, conversation_id)
            if name is None:
                return None
            self._claim(conn, conversation_id, name, take_over)
            loaded = self._read(conn, conversation_id, persist=True)
        self._leases.held[conversation_id] = name
        return loaded

    def claim(self, conversation_id: str) -> bool:
        """Take a conversation's lease without loading it: one this process goes on writing
        after its store was recovered into a fresh file. False if the store lacks it."""
        with self._write(f"claim conversation {conversation_id}") as conn:
            name = self._locked_name(conn, conversation_id)
            if name is None:
                return False
            self._lease(conn, conversation_id, time.time())
        self._leases.held[conversation_id] = name
        return True

    def delete(self, conversation_id: str, *, take_over: bool = False) -> bool:
        """Erase the conversation and the replies cached for it (False: no such id). A live
        holder elsewhere gives `ConversationInUse` unless `take_over`."""
        with self._write(f"delete conversation {conversation_id}") as conn:
            name = self._locked_name(conn, conversation_id)
            if name is None:
                return False
            self._claim(conn, conversation_id, name, take_over)
            for table, column in CONVERSATION_ROWS:
                self._erase(conn, table, column, conversation_id)
        self._leases.held.pop(conversation_id, None)
        return True

    def append_message(self, conversation_id: str, message: ConversationMessage) -> None:
        """Append a finished message; it ends (drops) the conversation's draft."""
        with self._write(f"record a message of conversation {conversation_id}") as conn:
            data = _message_json(message)
            self._renew(conn, conversation_id)
            self._append(conn, conversation_id, "message", data, message.role, message.turn)
            self._drop_draft(conn, conversation_id)

    def checkpoint(self, conversation_id: str, message: ConversationMessage) -> None:
        """Save the reply streamed so far (replacing the last checkpoint).

        `message` is the partial model message (all its parts so far). A crash loses at
        most what arrived since; the draft loads as an `incomplete` message. A message
        without parts drops the checkpoint (a retry that starts the reply over).
        """
        with self._write(f"checkpoint the reply of conversation {conversation_id}") as conn:
            self._renew(conn, conversation_id)
            if not message.parts:
                self._drop_draft(conn, conversation_id)
                return
            self._put_draft(conn, conversation_id, _message_json(message))

    def append_ledger(self, conversation_id: str, entry: LedgerEntry) -> None:
        """Append one API call's ledger row."""
        with self._write(f"record a ledger row of conversation {conversation_id}") as conn:
            data = _ledger_json(entry)
            self._renew(conn, conversation_id)
            self._append(conn, conversation_id, "ledger", data, turn=entry.turn)

    def save_settings(self, conversation_id: str, settings: Mapping[str, Any]) -> None:
        """Append the agent's settings if they differ from the stored ones (latest wins)."""
        with self._write(f"store the settings of conversation {conversation_id}") as conn:
            data = _dumps(dict(settings))
            self._renew(conn, conversation_id)
            if data != self._settings_text(conn, conversation_id):
                self._append(conn, conversation_id, "settings", data)

    def clear(self, conversation_id: str) -> None:
        """Append a "cleared" marker: later loads start after it (the ledger stays whole)."""
        with self._write(f"clear conversation {conversation_id}") as conn:
            self._renew(conn, conversation_id)
            self._append(conn, conversation_id, "cleared", "{}")
            self._drop_draft(conn, conversation_id)

    def _claim(self, conn: Conn, conversation_id: str, name: str, take_over: bool) -> None:
        """Take the lease unless a live holder elsewhere has it (and this is no take-over)."""
        now = time.time()
        self._leases.check_free(name, self._lease_of(conn, conversation_id), take_over, now)
        self._lease(conn, conversation_id, now)

    def _read(
        self, conn: Conn, conversation_id: str, *, persist: bool
    ) -> LoadedConversation | None:
        """Build the conversation from its rows; with `persist`, append what loading adds
        (the draft as `incomplete`, "interrupted" answers; the draft goes)."""
        rows = self._rows(conn, conversation_id)
        if rows is None:
            return None
        settings = json.loads(self._settings_text(conn, conversation_id) or "{}")
        loaded, added = assemble(
            conversation_id, rows.namespace, rows.name, settings, rows.messages, rows.ledger,
            None if rows.draft is None else _message(rows.draft), rows.turn_seq,
        )  # fmt: skip
        if persist:
            for message in added:
                self._append(
                    conn, conversation_id, "message", _message_json(message), message.role,
                    message.turn,
                )  # fmt: skip
            self._drop_draft(conn, conversation_id)
        return loaded

    @abstractmethod
    def _boundary(self, doing: str) -> contextlib.AbstractContextManager[Conn]:
        """The store's connection, its errors made `StoreError`."""

    @abstractmethod
    def _write(self, doing: str) -> contextlib.AbstractContextManager[Conn]:
        """A write transaction on the store's connection."""

    @abstractmethod
    def _insert_conversation(
        self, conn: Conn, conversation_id: str, namespace: str, name: str, now: float
    ) -> None:
        """Add the conversation's row, this store's owner's."""

    @abstractmethod
    def _listing(self, conn: Conn, namespace: str | None) -> list[Sequence[Any]]:
        """The listing's rows: id, namespace, name, created, messages, turns, size, last
        activity, then the lease row (all None without a lease)."""

    @abstractmethod
    def _erase(self, conn: Conn, table: str, column: str, conversation_id: str) -> None:
        """Delete the rows of `table` whose `column` names the conversation."""

    @abstractmethod
    def _rows(self, conn: Conn, conversation_id: str) -> ConversationRows | None:
        """This owner's conversation's rows since the last clear (None: no such id)."""

    @abstractmethod
    def _locked_name(self, conn: Conn, conversation_id: str) -> str | None:
        """The name of this owner's conversation (None: none), held until the write ends."""

    @abstractmethod
    def _lease_of(self, conn: Conn, conversation_id: str) -> Sequence[Any] | None:
        """The conversation's lease row (token, holder, pid, host, heartbeat), if any."""

    @abstractmethod
    def _lease(self, conn: Conn, conversation_id: str, now: float) -> None:
        """Write this store's lease of the conversation, heartbeat `now`."""

    @abstractmethod
    def _renew(self, conn: Conn, conversation_id: str) -> None:
        """Check (and renew) that this store still holds the lease, before a write."""

    @abstractmethod
    def _append(
        self,
        conn: Conn,
        conversation_id: str,
        kind: str,
        data: str,
        role: str | None = None,
        turn: int | None = None,
    ) -> None:
        """Append one record."""

    @abstractmethod
    def _settings_text(self, conn: Conn, conversation_id: str) -> str | None:
        """The latest stored settings, as stored."""

    @abstractmethod
    def _put_draft(self, conn: Conn, conversation_id: str, data: str) -> None:
        """Replace the conversation's draft."""

    @abstractmethod
    def _drop_draft(self, conn: Conn, conversation_id: str) -> None:
        """Drop the conversation's draft, if any."""


def assemble(
    conversation_id: str,
    namespace: str,
    name: str,
    settings: dict[str, Any],
    messages: list[ConversationMessage],
    ledger: list[LedgerEntry],
    draft: ConversationMessage | None,
    turn_seq: int,
) -> tuple[LoadedConversation, list[ConversationMessage]]:
    """A conversation from its stored rows (messages since the last clear), ready to go
    on; and the messages loading added (the draft as `incomplete`, "interrupted" answers),
    which `open` appends. Every store builds it here, so all load the same."""
    conversation = Conversation()
    conversation.messages = messages
    conversation.ledger = ledger
    added: list[ConversationMessage] = []
    if draft is not None:
        added.append(
            ConversationMessage(
                draft.role, draft.parts, draft.turn, draft.time, "incomplete", draft.usage,
                draft.model, draft.finish_reason,
            )
        )  # fmt: skip
    shown = [*messages, *added]
    repairs = unanswered_calls(shown)
    for index, calls in reversed(repairs):
        answer = _interrupted(shown[index - 1].turn, calls)
        if index >= len(messages):
            added.append(answer)  # the usual case: the reply the crash cut off
        else:  # only an unversioned store's damage: repaired in memory at every load
            messages.insert(index, answer)
    persisted = list(added)
    messages.extend(added)
    conversation.compactions = [i for i, m in enumerate(messages) if m.role == "summary"]
    conversation.turn_count = len({m.turn for m in messages if m.role != "summary"})
    conversation.turn_seq = max(turn_seq, max((m.turn for m in messages), default=0))
    interrupted = tuple(call for _, calls in repairs for call in calls)
    loaded = LoadedConversation(
        conversation_id, namespace, name, settings, conversation, interrupted
    )
    return loaded, persisted
