"""Writer leases, the part both stores decide alike: who this store is as a holder, whether
another holder is alive, and the errors when a conversation is taken or its lease was lost.

The SQLite `Store` and the PostgreSQL `PgStore` keep their lease rows in their own SQL
(token, holder, pid, host, heartbeat) and hand them here, so that both judge them the same.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConversationInUse, StoreError

LEFT_GO = "another kernel (it took the conversation over, then let it go)"
"""Who holds a conversation whose lease was taken from this store and then released."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` on this host still runs (a zombie does not)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill would terminate it; the heartbeat decides there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class Leases:
    """This store as a lease holder (a token, its pid and host) and the conversations it
    holds (`held`: id -> name). A lease row is (token, holder, pid, host, heartbeat)."""

    def __init__(self, holder: str, timeout: float) -> None:
        self.token = secrets.token_hex(8)
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.holder = f"{holder} (pid {self.pid} on host {self.host})"
        self.timeout = timeout
        self.held: dict[str, str] = {}

    def row(self, now: float) -> tuple[str, str, int, str, float]:
        """This store's lease row, heartbeat `now`."""
        return self.token, self.holder, self.pid, self.host, now

    def alive(self, pid: int, host: str, heartbeat: float, now: float) -> bool:
        """A holder is dead once silent past the lease timeout, or at once if its pid is gone."""
        if now - heartbeat > self.timeout:
            return False
        return host != self.host or pid_alive(pid)

    def live_holder(self, lease: Sequence[Any], now: float) -> str | None:
        """Who holds a listed conversation (its lease row, all None without one), if live."""
        token, holder, pid, host, heartbeat = lease
        if token is None:
            return None
        live = token == self.token or self.alive(pid, host, heartbeat, now)
        return str(holder) if live else None

    def check_free(
        self, name: str, lease: Sequence[Any] | None, take_over: bool, now: float
    ) -> None:
        """`ConversationInUse` if a live holder elsewhere has the lease and this is no
        take-over; else this store may take it."""
        if lease is None or lease[0] == self.token or take_over:
            return
        _, holder, pid, host, heartbeat = lease
        if self.alive(pid, host, heartbeat, now):
            raise ConversationInUse(name, holder)

    def lost(
        self, conversation_id: str, found: Sequence[Any] | None, location: str
    ) -> StoreError | ConversationInUse:
        """The error of a write whose lease this store no longer has: the conversation was
        deleted (`found` is None), or another took it (`found`: its name and holder, if any)."""
        if found is None:
            return StoreError(
                f"cannot write conversation {conversation_id}: it is no longer in the store "
                "(deleted by another kernel)",
                path=location,
            )
        self.held.pop(conversation_id, None)
        name, holder = found
        return ConversationInUse(name, holder or LEFT_GO)

    def keep(self, kept: set[str]) -> list[str]:
        """After a heartbeat renewed `kept`: forget the others and return their ids."""
        lost = [cid for cid in self.held if cid not in kept]
        for cid in lost:
            del self.held[cid]
        return lost
