"""A kernel killed with `kill -9` in the middle of its work: a child Python running a
test's script, killed once the test has seen what it waits for."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable


def kill_9_midway(script: str, *args: str, until: Callable[[], object]) -> None:
    """Run `script` with `args` in a child Python, SIGKILL it once `until()` returns (or
    raises), and check that it had not finished: each script prints "finished before the
    kill" after its work."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        until()
    finally:
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    assert b"finished before the kill" not in out, err
