"""MCP servers as tool sources, through the official `mcp` SDK (2.x), on the runtime loop.

A `McpSource` is one declared server: a stdio command (the SDK starts it as a
subprocess) or a streamable-HTTP URL. Its tools are `Tool`s whose declaration is the MCP
tool's own input schema and whose function is async, so the agent runs them on the
runtime loop. The session starts at first use on the loop that uses it, is reused, and
is closed by `aclose()`.

The SDK's context managers must be entered and left in one task, so each connection has
an owner task that opens them, hands the session over, and waits to be told to close.
A bad day is a tool error, never a stuck turn: a server that will not start within
`start_timeout`, a call not answered within `call_timeout`, and a server that exits are
each an `McpServerError` naming the server (with the end of its stderr); the connection
is then dropped in the background and the next call opens a new one. An error the tool
itself reports is a `ToolError` with its text. A cancelled turn cancels its call and
keeps the session.

Declared servers are kept in `mcp.json` beside the conversation store, in the
`{"mcpServers": {name: {"command", "args", "env"} | {"url", "headers"}}}` shape other MCP
clients use. The values of `env` and `headers` (where tokens go) never appear in reprs or
errors; the file is written readable by its owner only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import ipaddress
import json
import logging
import os
import re
import sys
import tempfile
import threading
import typing
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .config import default_store_path
from .errors import InvalidConfig, McpServerError, StoreError, Timeout, ToolError, WrongThread
from .tools import Tool, tool_from_schema

if TYPE_CHECKING:
    from mcp import ClientSession

log = logging.getLogger("agentrt_jupyter")
T = TypeVar("T")
SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
STDERR_TAIL = 600
"""How much of a server's stderr an error quotes."""
MAX_PAGES = 100
"""A tools/list that pages on past this is cut off (a server that never ends its list)."""
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True, repr=False)
class McpServerSpec:
    """How to reach one MCP server: a stdio `command` (+ args, env, cwd) or a `url`."""

    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise InvalidConfig(
                "give a command to start (stdio) or a URL (streamable HTTP), not both",
                field="mcp",
            )
        if self.command is not None and (not isinstance(self.command, str) or not self.command):
            raise InvalidConfig("the command must be a non-empty string", field="mcp.command")
        args: object = self.args
        if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
            raise InvalidConfig("args must be a list of strings", field="mcp.args")
        object.__setattr__(self, "args", tuple(self.args))
        for name in ("env", "headers"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise InvalidConfig(f"{name} must map strings to strings", field=f"mcp.{name}")
            object.__setattr__(self, name, dict(value))
        if self.cwd is not None and not isinstance(self.cwd, str):
            raise InvalidConfig("cwd must be a path string", field="mcp.cwd")
        if self.url is not None:
            _check_url(self.url)
        if self.headers and self.url is None:
            raise InvalidConfig("headers go with a URL, not a command", field="mcp.headers")

    @classmethod
    def parse(cls, words: Sequence[str], env: Mapping[str, str] | None = None) -> McpServerSpec:
        """From a command line (`npx -y server --flag`) or a single `http(s)://` URL."""
        if not words:
            raise InvalidConfig("give the server's command line or its URL", field="mcp")
        first = words[0]
        if len(words) == 1 and first.startswith(("http://", "https://")):
            return cls(url=first)
        return cls(command=first, args=tuple(words[1:]), env=dict(env or {}))

    def to_json(self) -> dict[str, Any]:
        if self.url is not None:
            shown: dict[str, Any] = {"url": self.url}
            if self.headers:
                shown["headers"] = dict(self.headers)
            return shown
        shown = {"command": self.command, "args": list(self.args)}
        if self.env:
            shown["env"] = dict(self.env)
        if self.cwd is not None:
            shown["cwd"] = self.cwd
        return shown

    @classmethod
    def from_json(cls, value: Any) -> McpServerSpec:
        if not isinstance(value, dict):
            raise InvalidConfig("a server entry must be an object", field="mcp")
        known = {"command", "args", "env", "cwd", "url", "headers"}
        unknown = sorted(set(value) - known - {"type"})  # "type": other clients' transport tag
        if unknown:
            raise InvalidConfig(f"unknown server settings {unknown}", field="mcp")
        settings = {k: v for k, v in value.items() if k in known}
        if "args" in settings and isinstance(settings["args"], list):
            settings["args"] = tuple(settings["args"])
        return cls(**settings)

    def __repr__(self) -> str:
        if self.url is not None:
            parts = urllib.parse.urlsplit(self.url)
            where = f"url={f'{parts.scheme}://{parts.hostname}{parts.path}'!r}"
            secrets = f", headers={dict.fromkeys(self.headers, '***')}" if self.headers else ""
            return f"McpServerSpec({where}{secrets})"
        env = f", env={dict.fromkeys(self.env, '***')}" if self.env else ""
        return f"McpServerSpec(command={self.command!r}, args={self.args!r}{env})"


def _check_url(url: object) -> None:
    """An http(s) URL an HTTP client can reach: its host a name or an IP address, its port
    a number, and no space or control character anywhere (`urlsplit` alone accepts
    `http://a b`, with the host "a b")."""
    if not isinstance(url, str):
        raise InvalidConfig("the URL must be a string", field="mcp.url")
    odd = next((i for i, c in enumerate(url) if c.isspace() or not c.isprintable()), None)
    if odd is not None:
        hint = " (a space in a path is written %20)" if url[odd] == " " else ""
        raise InvalidConfig(
            f"not a URL: it has {url[odd]!r} at position {odd}{hint}", field="mcp.url"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what can fail
    except ValueError as exc:
        raise InvalidConfig(f"not a URL ({exc})", field="mcp.url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidConfig(
            "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/mcp",
            field="mcp.url",
        )
    if not _is_host(parts.hostname):
        raise InvalidConfig(
            f"not a URL: its host {parts.hostname[:80]!r} is not a host name or IP address",
            field="mcp.url",
        )


def _is_host(host: str) -> bool:
    """A DNS name (international ones too) or an IP address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in ascii_host.rstrip(".").split("."))


class _Connection:
    """One session: the task that owns the SDK's context managers, and the session it made."""

    def __init__(self, source: McpSource) -> None:
        loop = asyncio.get_running_loop()
        self.source = source
        self.ready: asyncio.Future[ClientSession] = loop.create_future()
        self.ready.add_done_callback(_retrieve)
        self.stop = asyncio.Event()
        self.cancelled = False
        self.deadline = loop.time() + source.start_timeout
        self.stderr: typing.TextIO | None = None
        if source.spec.command is not None:
            # closed by release(), once the connection is gone and its errors are written
            stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
            self.stderr = typing.cast(typing.TextIO, stderr)
        self.task = asyncio.create_task(self._own(), name=f"mcp:{source.name}")

    async def _own(self) -> None:
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport(stack))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self.ready.set_result(session)
                await self.stop.wait()
        except asyncio.CancelledError:
            self._failed("was stopped while starting")
            raise
        except BaseException as exc:  # the SDK's task groups raise ExceptionGroups
            log.debug("MCP server %r: the connection ended", self.source.name, exc_info=True)
            self._failed(f"could not be reached ({_describe(exc)})")

    def _transport(
        self, stack: contextlib.AsyncExitStack
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        spec = self.source.spec
        if spec.command is not None:
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=spec.command, args=list(spec.args), env=dict(spec.env) or None, cwd=spec.cwd
            )
            assert self.stderr is not None
            return stdio_client(params, errlog=self.stderr)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        client = httpx2.AsyncClient(
            headers=dict(spec.headers) or None, timeout=httpx2.Timeout(30.0, read=300.0)
        )
        stack.push_async_callback(client.aclose)
        assert spec.url is not None
        return streamable_http_client(spec.url, http_client=client)

    def _failed(self, what: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(self.error(what))

    def error(self, what: str, *, quote_stderr: bool = True) -> McpServerError:
        """`what` happened; a server that failed says why on stderr, so its end is quoted."""
        tail = self.stderr_tail() if quote_stderr else ""
        return McpServerError(f"{what}{tail}", server=self.source.name)

    def stderr_tail(self) -> str:
        if self.stderr is None or self.stderr.closed:
            return ""
        try:
            self.stderr.flush()
            size = self.stderr.seek(0, os.SEEK_END)
            self.stderr.seek(max(0, size - STDERR_TAIL * 4))
            text = self.stderr.read()[-STDERR_TAIL:].strip()
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends with: {text}" if text else ""

    def close_soon(self) -> None:
        """Leave the session; a connection still starting is cancelled, once: a second
        cancel during the SDK's shielded shutdown stalls it (mcp 2.3 on asyncio)."""
        self.stop.set()
        if not self.ready.done() and not self.cancelled:
            self.cancelled = True
            self.task.cancel()

    def release(self) -> None:
        if self.stderr is not None:
            self.stderr.close()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failed start as seen, whoever waits for it (or nobody)."""
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class McpSource:
    """One MCP server as a source of tools (see the module docstring)."""

    def __init__(
        self,
        name: str,
        spec: McpServerSpec,
        *,
        start_timeout: float = 30.0,
        call_timeout: float = 120.0,
        close_timeout: float = 10.0,
    ) -> None:
        _check_server_name(name)
        if not isinstance(spec, McpServerSpec):
            raise InvalidConfig("must be an McpServerSpec", field="mcp")
        for setting, value in (
            ("start_timeout", start_timeout),
            ("call_timeout", call_timeout),
            ("close_timeout", close_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidConfig(
                    f"must be a number of seconds > 0, got {value!r}", field=setting
                )
        self.name = name
        self.spec = spec
        self.start_timeout = float(start_timeout)
        self.call_timeout = float(call_timeout)
        self.close_timeout = float(close_timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live: _Connection | None = None
        self._closing: set[_Connection] = set()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "not connected"
        return f"McpSource({self.name!r}, {self.spec!r}, {state})"

    @property
    def connected(self) -> bool:
        live = self._live
        return live is not None and live.ready.done() and not live.ready.exception()

    async def list_tools(self) -> list[Tool]:
        """The server's tools as `Tool`s (async functions that call it through this source)."""
        from mcp import types

        tools: list[Tool] = []
        cursor: str | None = None
        for _page in range(MAX_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None

            def page(session: ClientSession, params: Any = params) -> Awaitable[Any]:
                return session.list_tools(params=params)

            listing = await self._request("tools/list", page)
            tools.extend(self._tool(t.name, t.description, t.input_schema) for t in listing.tools)
            cursor = listing.next_cursor
            if not cursor:
                break
        return tools

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> Any:
        """Call one tool; its result as JSON (structured content, else its text)."""
        result = await self._request(f"tool {name!r}", lambda s: s.call_tool(name, dict(arguments)))
        blocks = [_block(b) for b in result.content]
        if result.is_error:
            text = "\n".join(b for b in blocks if isinstance(b, str))
            raise ToolError(text or f"the MCP tool {name!r} reported an error")
        if result.structured_content is not None:
            return result.structured_content
        if all(isinstance(b, str) for b in blocks):
            return "\n".join(blocks)
        return {"content": blocks}

    async def aclose(self) -> None:
        """Close every session of this source within `close_timeout`; a later call reopens one."""
        if self._live is not None:
            self._drop(self._live)
        closing = list(self._closing)
        for connection in closing:
            connection.close_soon()
        if closing:
            _done, pending = await asyncio.wait(
                [c.task for c in closing], timeout=self.close_timeout
            )
            if pending:
                log.warning(
                    "MCP server %r: %d connection(s) still closing after %g s",
                    self.name,
                    len(pending),
                    self.close_timeout,
                )

    def _tool(self, name: str, description: str | None, schema: dict[str, Any]) -> Tool:
        declared = _declared_name(name)

        async def call(**arguments: Any) -> Any:
            return await self.call_tool(name, arguments)

        call.__name__ = call.__qualname__ = declared
        text = description or f"the MCP tool {name} of the server {self.name}"
        return tool_from_schema(declared, text, schema, call)

    async def _connection(self) -> _Connection:
        """The live connection, started if needed; `McpServerError` if it does not start."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop and not self._loop.is_closed():
            raise WrongThread(
                f"MCP source {self.name!r} lives on the loop that first used it (the runtime's): "
                "call it there, e.g. load_tools(source, runtime)"
            )
        if self._loop is not loop:  # first use, or the first loop is gone with its sessions
            self._loop, self._live = loop, None
            for stale in self._closing:
                stale.release()
            self._closing.clear()
        if "mcp" not in sys.modules:  # ~1 s of imports: not on the loop, which serves others
            try:
                await asyncio.to_thread(importlib.import_module, "mcp")
            except ImportError:
                raise InvalidConfig(
                    "MCP servers need the mcp package: pip install 'agentrt-jupyter[mcp]'",
                    field="mcp",
                ) from None
        connection = self._live
        if connection is None or connection.task.done():
            if connection is not None:
                self._drop(connection)
            connection = self._live = _Connection(self)
        left = connection.deadline - loop.time()
        try:
            await asyncio.wait_for(asyncio.shield(connection.ready), max(0.0, left))
        except TimeoutError:
            self._drop(connection)
            raise connection.error(
                f"did not start within {self.start_timeout:g} s (start_timeout)"
            ) from None
        except McpServerError:
            self._drop(connection)
            raise
        return connection

    async def _request(self, what: str, send: Callable[[ClientSession], Awaitable[T]]) -> T:
        """`send(session)` on the live session, bounded by `call_timeout`; failures mapped."""
        import anyio
        from mcp import MCPError

        connection = await self._connection()
        session = connection.ready.result()
        try:
            async with asyncio.timeout(self.call_timeout):
                return await send(session)
        except TimeoutError:
            self._drop(connection)
            raise connection.error(
                f"{what} got no answer within {self.call_timeout:g} s (call_timeout); the "
                "connection was closed and a new one opens at the next call",
                quote_stderr=False,
            ) from None
        except MCPError as exc:
            from mcp_types import CONNECTION_CLOSED

            if exc.code != CONNECTION_CLOSED:
                raise ToolError(f"{what}: {exc.message} (MCP error {exc.code})") from None
            self._drop(connection)
            raise connection.error(
                f"the connection closed during {what} (the server exited?); a new one opens "
                "at the next call"
            ) from None
        except (OSError, EOFError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._drop(connection)
            raise connection.error(f"{what} failed: {_describe(exc)}") from None

    def _drop(self, connection: _Connection) -> None:
        """Stop using `connection`: it closes in the background, `aclose` waits for it."""
        if self._live is connection:
            self._live = None
        connection.close_soon()
        self._closing.add(connection)
        connection.task.add_done_callback(lambda _task: self._finished(connection))

    def _finished(self, connection: _Connection) -> None:
        if connection in self._closing:
            self._closing.discard(connection)
            connection.release()


def _block(block: Any) -> Any:
    """One content block as JSON: text as a string; binary data summarised, not sent."""
    if getattr(block, "type", None) == "text":
        return str(block.text)
    shown: dict[str, Any] = block.model_dump(mode="json", exclude_none=True, by_alias=False)
    for key in ("data", "blob"):
        if isinstance(shown.get(key), str):
            shown[key] = f"<{len(shown[key]) * 3 // 4:,} bytes, not shown>"
    resource = shown.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("blob"), str):
        resource["blob"] = f"<{len(resource['blob']) * 3 // 4:,} bytes, not shown>"
    return shown


def _declared_name(name: str) -> str:
    """The MCP tool's name as Gemini accepts it (other characters become _)."""
    cleaned = _NOT_NAME.sub("_", name)[:64] or "tool"
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"_{cleaned[:63]}"


def _check_server_name(name: object) -> None:
    if not isinstance(name, str) or not SERVER_NAME.fullmatch(name):
        raise InvalidConfig(
            f"{name!r} is not a server name: 1-64 letters, digits, _ . -, starting with a "
            "letter or digit",
            field="name",
        )


class TaskRunner(Protocol):
    """What runs the sessions: an `AgentRuntime` (its loop thread and `start_task_soon`)."""

    @property
    def thread(self) -> threading.Thread: ...

    def start_task_soon(
        self, fn: Callable[[], Coroutine[Any, Any, T]], /
    ) -> concurrent.futures.Future[T]: ...


def load_tools(
    source: McpSource, runtime: TaskRunner, *, timeout: float | None = None
) -> list[Tool]:
    """`source.list_tools()` run on `runtime`'s loop, waited for from another thread."""
    return _run_on(runtime, source.list_tools, timeout, f"listing the tools of {source.name!r}")


def close_source(source: McpSource, runtime: TaskRunner, *, timeout: float | None = None) -> None:
    """`source.aclose()` run on `runtime`'s loop, waited for from another thread."""
    _run_on(runtime, source.aclose, timeout, f"closing {source.name!r}")


def _run_on(
    runtime: TaskRunner,
    call: Callable[[], Coroutine[Any, Any, T]],
    timeout: float | None,
    what: str,
) -> T:
    if threading.current_thread() is runtime.thread:
        raise WrongThread(f"{what} from the loop's own thread would deadlock: await it there")
    future: concurrent.futures.Future[T] = runtime.start_task_soon(call)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise Timeout(f"{what} took longer than {timeout:g} s") from None


def settings_path() -> Path:
    """Where declared MCP servers are kept: `mcp.json` beside the conversation store."""
    return default_store_path().parent / "mcp.json"


def declared_servers(path: Path | None = None) -> dict[str, McpServerSpec]:
    """The declared servers by name (none if the file does not exist yet)."""
    file = path or settings_path()
    return _read(file)


def server_spec(name: str, path: Path | None = None) -> McpServerSpec:
    """The declared server `name`, or `InvalidConfig` naming the ones there are."""
    servers = declared_servers(path)
    if name not in servers:
        raise _undeclared(name, servers)
    return servers[name]


def add_server(name: str, spec: McpServerSpec, path: Path | None = None) -> None:
    """Declare (or re-declare) server `name`."""
    _check_server_name(name)
    if not isinstance(spec, McpServerSpec):
        raise InvalidConfig("must be an McpServerSpec", field="mcp")
    file = path or settings_path()
    with _locked(file):
        servers = _read(file)
        servers[name] = spec
        _write(file, servers)


def remove_server(name: str, path: Path | None = None) -> McpServerSpec:
    """Forget server `name`; returns what it was. `InvalidConfig` if it was not declared."""
    file = path or settings_path()
    with _locked(file):
        servers = _read(file)
        if name not in servers:
            raise _undeclared(name, servers)
        removed = servers.pop(name)
        _write(file, servers)
    return removed


def _undeclared(name: str, servers: Mapping[str, McpServerSpec]) -> InvalidConfig:
    known = ", ".join(sorted(servers)) or "none yet"
    return InvalidConfig(
        f"no MCP server named {name!r} is declared (declared: {known}); add one with "
        "add_server(name, spec) (in a notebook: %agent mcp add NAME -- command args...)",
        field="name",
    )


def _read(file: Path) -> dict[str, McpServerSpec]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StoreError(f"cannot read the MCP settings: {exc.strerror}", path=str(file)) from None
    try:
        entries = json.loads(text).get("mcpServers", {})
        if not isinstance(entries, dict):
            raise ValueError("mcpServers must be an object")
        return {str(name): McpServerSpec.from_json(entry) for name, entry in entries.items()}
    except (ValueError, AttributeError) as exc:  # JSONDecodeError and InvalidConfig are ValueErrors
        raise StoreError(
            f"the MCP settings are not valid ({exc}): fix or delete the file", path=str(file)
        ) from None


def _write(file: Path, servers: Mapping[str, McpServerSpec]) -> None:
    text = json.dumps(
        {"mcpServers": {name: spec.to_json() for name, spec in servers.items()}}, indent=2
    )
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=file.parent, prefix=".mcp-", suffix=".json")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(text + "\n")
            os.chmod(temporary, 0o600)
            os.replace(temporary, file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise StoreError(f"cannot write the MCP settings: {exc.strerror}", path=str(file)) from None


_FILE_LOCK = threading.Lock()


@contextlib.contextmanager
def _locked(file: Path) -> Iterator[None]:
    """One writer at a time: across threads here, and across processes where flock exists."""
    with _FILE_LOCK:
        try:
            import fcntl
        except ImportError:  # Windows: threads only
            yield
            return
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            lock = open(file.with_name(file.name + ".lock"), "a")  # noqa: SIM115
        except OSError as exc:
            raise StoreError(
                f"cannot lock the MCP settings: {exc.strerror}", path=str(file)
            ) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
