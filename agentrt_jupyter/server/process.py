"""`LocalServer`: the server as a child process, plus a small sync control client.

The client uses only the standard library (no aiohttp import) because it runs inside
Jupyter kernels, where import time matters. The child holds a pipe on its stdin and
exits when it closes, so it never outlives its parent; a `weakref.finalize` kills it if
the `LocalServer` is forgotten without `stop()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .limits import ServerLimits

_CONTROL_TIMEOUT = 5.0
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _read_line(stream: IO[bytes], deadline: float) -> bytes | None:
    """One line from a pipe, or None on EOF or when the deadline passes."""
    fd = stream.fileno()
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not selector.select(remaining):
                continue
            data = os.read(fd, 65536)
            if not data:
                return None
            buffer += data
    return buffer.split(b"\n", 1)[0]


def _tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - limit))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _shutdown(process: subprocess.Popen[bytes], log_path: str) -> None:
    """Kill the child if still running and remove its log; holds no reference to the owner."""
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
    with contextlib.suppress(OSError):
        os.unlink(log_path)


def _child_env(token: str) -> dict[str, str]:
    env = dict(os.environ, AGENTRT_SERVER_TOKEN=token)
    root = Path(__file__).resolve().parents[2]
    if root.name not in ("site-packages", "dist-packages"):
        # Run from a source tree: make the child import this same copy of the package.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


class LocalServer:
    """A running `python -m agentrt_jupyter.server`; create it with `LocalServer.start()`."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        url: str,
        token: str,
        engine: str,
        log_path: str,
    ) -> None:
        self._process = process
        self.url = url
        self.token = token
        self.engine = engine
        self.pid = process.pid
        self.log_path = log_path
        self._finalizer = weakref.finalize(self, _shutdown, process, log_path)

    @classmethod
    def start(
        cls,
        engine: str = "scripted",
        *,
        startup_timeout: float = 60.0,
        engine_args: Sequence[str] = (),
        limits: ServerLimits | None = None,
    ) -> LocalServer:
        """Spawn the server and wait for its ready line; RuntimeError (with its stderr) if
        it exits or is not ready within `startup_timeout` seconds.

        `engine_args` are extra `agentrt-server` options; `limits` sets its timeouts and
        size bounds (default `ServerLimits()`).
        """
        token = secrets.token_urlsafe(24)
        fd, log_path = tempfile.mkstemp(prefix="agentrt-server-", suffix=".log")
        os.close(fd)
        command = [sys.executable, "-m", "agentrt_jupyter.server", "--engine", engine]
        if limits is not None:
            command += limits.cli_args()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [*command, *engine_args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_child_env(token),
                close_fds=True,
                # Its own session: a kernel interrupt (SIGINT to the kernel's process
                # group) must not kill the server; it exits when our stdin pipe closes.
                start_new_session=True,
            )
        assert process.stdout is not None
        line = _read_line(process.stdout, time.monotonic() + startup_timeout)
        try:
            ready = json.loads(line) if line else None
        except json.JSONDecodeError:
            ready = None
        if not isinstance(ready, dict) or ready.get("token") != token:
            exited = process.poll()
            state = f"exited with code {exited}" if exited is not None else "was not ready"
            tail = _tail(log_path)
            _shutdown(process, log_path)
            raise RuntimeError(
                f"agentrt server ({engine}) {state} within {startup_timeout}s; "
                f"stdout: {line!r}; stderr tail:\n{tail}"
            )
        return cls(process, url=str(ready["url"]), token=token, engine=engine, log_path=log_path)

    @property
    def openai_base_url(self) -> str:
        """The `base_url` the `openai` SDK takes: its paths start after `/v1`."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The `base_url` the `anthropic` SDK takes: its paths start with `/v1`."""
        return self.url

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Close stdin (the server's exit signal), wait, then terminate or kill. Idempotent."""
        if not self._finalizer.alive:
            return
        process = self._process
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)
        self._finalizer()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalServer {self.engine} {self.url} pid={self.pid} {state}>"

    def stderr_tail(self, limit: int = 4000) -> str:
        """The end of the server's stderr log, for failure messages."""
        return _tail(self.log_path, limit)

    def _control(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = _CONTROL_TIMEOUT,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"x-agentrt-token": self.token, "content-type": "application/json"},
        )
        try:
            with _opener.open(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            if exc.code == 408:
                raise TimeoutError(f"{method} {path}: {detail}") from None
            raise RuntimeError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None

    def health(self) -> dict[str, Any]:
        """`{"ok": true, "engine": ..., "tcp_nodelay": bool}` (for the asking connection)."""
        result: dict[str, Any] = self._control("GET", "/_agentrt/health")
        return result

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Logged model requests with id > `since`, oldest first."""
        result: list[dict[str, Any]] = self._control(
            "GET", f"/_agentrt/requests?since={int(since)}"
        )["requests"]
        return result

    def last_request(self) -> dict[str, Any]:
        """The most recent logged request; LookupError if the log is empty."""
        try:
            result: dict[str, Any] = self._control("GET", "/_agentrt/requests/last")
        except RuntimeError as exc:
            raise LookupError("no requests logged") from exc
        return result

    def wait_for_request(self, request_id: int, timeout: float = 10.0) -> dict[str, Any]:
        """Block until request `request_id` has finished; TimeoutError if not in time."""
        query = urllib.parse.urlencode({"timeout": timeout})
        result: dict[str, Any] = self._control(
            "GET",
            f"/_agentrt/requests/{int(request_id)}/wait?{query}",
            timeout=timeout + _CONTROL_TIMEOUT,
        )
        return result

    def wait_for_count(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least `n` requests are logged and return them all."""
        query = urllib.parse.urlencode({"n": n, "timeout": timeout})
        result: list[dict[str, Any]] = self._control(
            "GET",
            f"/_agentrt/requests/wait_count?{query}",
            timeout=timeout + _CONTROL_TIMEOUT,
        )["requests"]
        return result

    def wait_for_tagged(self, tag: str, timeout: float = 10.0) -> dict[str, Any]:
        """Block until a request whose body holds `tag` is logged (its body read); return it."""
        query = urllib.parse.urlencode({"tag": tag, "timeout": timeout})
        result: dict[str, Any] = self._control(
            "GET",
            f"/_agentrt/requests/wait_tagged?{query}",
            timeout=timeout + _CONTROL_TIMEOUT,
        )
        return result

    def push_faults(self, *specs: str, match: str | None = None) -> None:
        """Queue faults for the next generate requests (those whose prompt has `match`)."""
        self._control("POST", "/_agentrt/faults", {"faults": list(specs), "match": match})

    def clear_faults(self) -> None:
        self._control("DELETE", "/_agentrt/faults")

    def set_rate_limit(self, per_second: float | None) -> None:
        """Answer the generate requests past `per_second` a second with a per-minute 429
        (RetryInfo: when the next would pass); None lifts the limit."""
        self._control("POST", "/_agentrt/rate_limit", {"per_second": per_second})

    def set_batch_delay(self, seconds: float) -> None:
        """How long the Batch API jobs created from now on take to succeed (see batches.py)."""
        self._control("POST", "/_agentrt/batches", {"delay": seconds})

    def reset(self) -> None:
        """Clear the request log and the fault queue."""
        self.clear_faults()
        self._control("DELETE", "/_agentrt/requests")
