"""How long and how much the server reads from a client, and how much of it it keeps.

A plain dataclass without aiohttp, so `LocalServer.start(limits=...)` can pass the
settings on as `agentrt-server` options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client can make the server hold.

    - `header_timeout`: seconds a connection may take to send a request's headers,
      counted from the connection's opening or from the first byte after the previous
      request; a stalled one gets a 408 and is closed. An idle keep-alive connection is
      not timed by it.
    - `body_timeout`: seconds a request may take to send its body once its headers are
      in; a stalled one gets a Gemini-shaped 408 and is closed.
    - `max_body_bytes`: larger bodies get a Gemini-shaped 413 (Gemini takes about 20 MB).
    - `log_records`: the request log keeps the most recent this many records (ids keep
      increasing past it).
    - `log_body_bytes`: an accepted body up to this size (as sent) is kept whole in its
      record; a larger one is kept as an excerpt.
    - `log_total_body_bytes`: once the kept bodies add up to more, the oldest records
      lose theirs.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_body_bytes: int = 20 * 1024 * 1024
    log_records: int = 10_000
    log_body_bytes: int = 256 * 1024
    log_total_body_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(
                    f"ServerLimits.{field.name} must be a positive number, got {value!r}"
                )

    def cli_args(self) -> list[str]:
        """The `agentrt-server` options that set the values that differ from the defaults."""
        default = ServerLimits()
        args: list[str] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != getattr(default, field.name):
                args += [f"--{field.name.replace('_', '-')}", str(value)]
        return args
