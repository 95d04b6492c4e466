"""`python -m agentrt_jupyter.server` / `agentrt-server`: run the local Gemini-compatible server.

Once listening it prints one JSON line (url, token, pid, engine) to stdout and then
stays silent there; logs go to stderr. It exits on SIGTERM/SIGINT and when stdin
reaches EOF, so a parent holding the pipe takes the server down with it. The
`--header-timeout`, `--body-timeout`, `--max-body-bytes` and `--log-*` options set the
fields of `ServerLimits` (see limits.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from .app import create_app
from .connections import listen
from .engines.base import Engine
from .limits import ServerLimits

ENGINES = {
    "scripted": "agentrt_jupyter.server.engines.scripted",
    "local": "agentrt_jupyter.server.engines.local",
}
_EXTRAS = {"local": "agentrt-jupyter[local]"}
_SHUTDOWN_TIMEOUT = 0.5
# Idle keep-alive connections close after this; longer than the pools of aiohttp (15 s)
# and httpx (5 s) keep them, so a client never reuses one the server is closing.
_KEEPALIVE_TIMEOUT = 75.0
_LIMIT_HELP = {
    "header_timeout": "seconds a request may take to send its headers",
    "body_timeout": "seconds a request may take to send its body",
    "max_body_bytes": "larger request bodies get a 413",
    "log_records": "request records kept (the oldest are evicted)",
    "log_body_bytes": "larger bodies are kept in the request log as an excerpt",
    "log_total_body_bytes": "the request log releases the oldest bodies past this total",
}


def load_engine(name: str, options: dict[str, Any]) -> Engine:
    """Import the engine's module only when asked for: the local one needs extras.

    Failures exit with a one-line message (naming the extra to install) instead of a
    traceback, since the parent shows the tail of stderr to the user.
    """
    try:
        module = importlib.import_module(ENGINES[name])
        engine: Engine = module.create_engine(**options)
    except ImportError as exc:
        extra = _EXTRAS.get(name)
        hint = f"; install it with: pip install '{extra}'" if extra else ""
        raise SystemExit(f"agentrt-server: cannot load the {name!r} engine ({exc}){hint}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"agentrt-server: cannot start the {name!r} engine: {exc}") from exc
    return engine


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrt-server", description="Local Gemini-compatible server for agentrt-jupyter."
    )
    parser.add_argument("--engine", choices=sorted(ENGINES), default="scripted")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "-o",
        "--engine-option",
        type=_parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the engine factory; VALUE is parsed as JSON when it can be",
    )
    parser.add_argument(
        "--ignore-stdin",
        action="store_true",
        help="keep running when stdin closes (for running by hand in the background)",
    )
    parser.add_argument("--log-level", default="WARNING")
    defaults = ServerLimits()
    for field in dataclasses.fields(ServerLimits):
        default = getattr(defaults, field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=_positive(type(default)),
            default=default,
            metavar="N",
            help=f"{_LIMIT_HELP[field.name]} (default {default})",
        )
    return parser


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def _limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerLimits)})


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Block on stdin in a daemon thread; EOF means the parent is gone.

    It reads the raw fd: a daemon thread blocked inside a buffered reader aborts the
    interpreter at exit.
    """
    try:
        while os.read(sys.stdin.fileno(), 65536):
            pass
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(stop.set)


async def serve(
    engine: Engine,
    token: str,
    host: str,
    port: int,
    *,
    limits: ServerLimits | None = None,
    watch_stdin: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT or stdin EOF; print the ready line once listening."""
    limits = limits or ServerLimits()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        create_app(engine, token, limits),
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
        keepalive_timeout=_KEEPALIVE_TIMEOUT,
        access_log=None,
    )
    await runner.setup()
    listening: asyncio.Server | None = None
    try:
        listening = await listen(runner, host, port, header_timeout=limits.header_timeout)
        bound_host, bound_port = listening.sockets[0].getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        ready = {
            "url": f"http://{url_host}:{bound_port}",
            "token": token,
            "pid": os.getpid(),
            "engine": engine.name,
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        if watch_stdin:
            threading.Thread(
                target=_watch_stdin, args=(loop, stop), name="agentrt-stdin", daemon=True
            ).start()
        await stop.wait()
    finally:
        if listening is not None:
            listening.close()
        try:
            await asyncio.wait_for(runner.cleanup(), _SHUTDOWN_TIMEOUT * 4)
        except TimeoutError:
            logging.getLogger("agentrt_jupyter.server").warning("shutdown timed out")
        await engine.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    engine = load_engine(args.engine, dict(args.engine_option))
    token = os.environ.get("AGENTRT_SERVER_TOKEN") or secrets.token_urlsafe(24)
    asyncio.run(
        serve(
            engine,
            token,
            args.host,
            args.port,
            limits=_limits(args),
            watch_stdin=not args.ignore_stdin,
        )
    )


if __name__ == "__main__":
    main()
