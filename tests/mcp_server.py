"""A small MCP server for tests/test_mcp_tools.py, written with the SDK's MCPServer.

`python tests/mcp_server.py` serves over stdio; `--http` serves streamable HTTP on a
free port of 127.0.0.1 and prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("agentrt-test")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def environment(name: str) -> str:
    """The value of an environment variable of the server ('' if unset)."""
    return os.environ.get(name, "")


@app.tool()
def fail(message: str) -> str:
    """Fail with `message`."""
    raise ToolError(message)


@app.tool()
def picture():  # type: ignore[no-untyped-def]  # unannotated: the SDK sends content, not JSON
    """A caption and a tiny PNG."""
    return ["a red dot", Image(data=b"\x89PNG\r\n\x1a\n" + b"\0" * 60, format="png")]


@app.tool()
def die() -> str:
    """Exit the server process at once."""
    print("the test server exits on request", file=sys.stderr, flush=True)
    os._exit(3)


@app.tool()
async def hang() -> str:
    """Block the whole server (its event loop too) for an hour."""
    time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is the point
    return "never"


@app.tool()
async def wait_connected(port: int) -> str:
    """Connect to 127.0.0.1:`port` (the test's signal that the call is running), then wait."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"running\n")
    await writer.drain()
    await asyncio.sleep(3600)
    return "never"


def serve_http() -> None:
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app.streamable_http_app(), log_level="warning"))
    asyncio.run(server.serve(sockets=[listener]))


if __name__ == "__main__":
    if "--http" in sys.argv:
        serve_http()
    else:
        app.run("stdio")
