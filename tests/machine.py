"""What the test machine offers: a prerequisite that skips locally and fails in CI, and a
free TCP port for a server a test starts."""

from __future__ import annotations

import os
import socket

import pytest


def require(condition: bool, what: str) -> None:
    """Missing prerequisites fail in CI (a green run must not hide them) and skip locally."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
