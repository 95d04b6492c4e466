"""A shutdown cut short by its timeout still closes every client (issue 17 item 5).

`shutdown(0.01)` raises `Timeout` while a tool holds the loop 20 ms at a time; a second
`shutdown(5)` returns. By then every HTTP client is closed: the process holds no more
sockets than before the runtime, and aiohttp reports no unclosed session at exit.
Checked in a subprocess, whose stderr is where aiohttp complains.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentrt_jupyter.server.process import LocalServer

ROOT = Path(__file__).resolve().parents[1]

CUT_SHORT_SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, os, threading, time
    from agentrt_jupyter import AgentRuntime, RuntimeConfig, Timeout

    def sockets() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        return count

    started = threading.Event()

    async def hog(seconds: float) -> str:
        '''Hold the loop 20 ms at a time (a badly written tool): closing takes longer.'''
        started.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
            await asyncio.sleep(0)
        return "done"

    config = RuntimeConfig(
        base_url=os.environ["AGENTRT_TEST_URL"],
        api_key=os.environ["AGENTRT_TEST_KEY"],
        api_version="v1beta",
        store_path=None,
    )
    before = sockets()
    runtime = AgentRuntime(config)
    crowd = [runtime.create_agent() for _ in range(8)]
    for handle in [a.chat(f"pooled {i}") for i, a in enumerate(crowd)]:
        handle.result(timeout=30)  # their connections now wait in the client's pool
    streaming = [a.chat(f"@@delay 10\\n@@chunks 200\\nbusy {i}") for i, a in enumerate(crowd[:3])]
    for handle in streaming:
        next(iter(handle.events(timeout=30)))
    runtime.create_agent(tools=[hog]).chat('@@call hog {"seconds": 30}\\nslow stop')
    assert started.wait(30), "the tool never started"
    print("sockets_while_running", sockets() - before, flush=True)
    begun = time.monotonic()
    try:
        runtime.shutdown(0.01)
    except Timeout:
        print(f"timeout_after_s {time.monotonic() - begun:.4f}", flush=True)
    runtime.shutdown(5)
    del runtime, crowd, streaming
    gc.collect()
    print("sockets_left", sockets() - before, flush=True)
    """
)


@pytest.mark.timeout(90)
def test_a_shutdown_cut_short_by_its_timeout_still_closes_every_client(
    server: LocalServer,
) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ, PYTHONPATH=path, AGENTRT_TEST_URL=server.url, AGENTRT_TEST_KEY=server.token
    )
    done = subprocess.run(
        [sys.executable, "-c", CUT_SHORT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"exit code {done.returncode}; stderr:\n{done.stderr}"
    lines = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines())
    assert int(lines["sockets_while_running"]) > 0, done.stdout
    assert "timeout_after_s" in lines, f"shutdown(0.01) did not time out: {done.stdout}"
    # Kept within a few ms of the timeout (a loose bound: the machine is shared).
    assert float(lines["timeout_after_s"]) < 0.01 + 0.04, done.stdout
    assert int(lines["sockets_left"]) == 0, done.stdout
    assert "Unclosed client session" not in done.stderr, done.stderr
    assert "Unclosed connector" not in done.stderr, done.stderr
