"""Figure 4: cancel latency, from the cancel being sent to the stream closed at the server.

Paths: `ChatHandle.cancel()` (runtime only; alone, and beside 100 agents streaming 20
chunks/s each),
and in a real ipykernel: a click on the Cancel button under a streaming `%%agent` reply
(a widget comm_msg while the awaiting cell runs), `%agent cancel NAME` for a
`--background` turn, and a kernel interrupt. Each trial waits until the reply is
streaming, sends the cancel, and reads the server's log: its `finished` time for that
request (the socket closed) minus the time the cancel was sent. The "stopped" time is
when the turn ended (runtime) or its CANCELLED footer reached the front end (kernel).

Target: p95 < 100 ms for each path.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from typing import Any

from _common import dist, main, not_run, row, runtime_config, show
from _kernel import BenchKernel, agent_kernel, first_display_id, widget_comm

from agentrt_jupyter import AgentRuntime
from agentrt_jupyter.server.process import LocalServer

FIGURE = "4. Cancel latency"
TARGET = "p95 < 100 ms"
STREAM = "@@delay 10\n@@tiny 1000"  # 10 s if never cancelled
BUSY = "@@delay 50\n@@tiny 600"  # the other agents: 20 chunks/s each, 30 s
WAIT = 15.0
"""A trial whose turn has not stopped this long after the cancel counts as a failure."""


def prompt() -> tuple[str, str]:
    tag = f"cancel{uuid.uuid4().hex[:10]}"
    return tag, f"{tag}\n{STREAM}"


def server_finished(server: LocalServer, tag: str) -> float:
    """When the server saw the tagged stream end (waits for it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for record in server.requests():
            if tag in json.dumps(record.get("body")):
                finished = server.wait_for_request(record["id"], timeout=30)["finished"]
                return float(finished)
        time.sleep(0.01)
    raise TimeoutError(f"no request with {tag}")


def runtime_trial(runtime: AgentRuntime, server: LocalServer) -> tuple[float, float, str]:
    tag, text = prompt()
    handle = runtime.chat(runtime.create_agent(), text)
    deadline = time.monotonic() + WAIT
    while not handle.partial_text:
        if time.monotonic() > deadline:
            handle.cancel()
            raise TimeoutError("no reply text")
        time.sleep(0.001)
    sent = time.time()
    handle.cancel()
    outcome = None
    while outcome is None:
        if time.monotonic() > deadline + WAIT:
            raise TimeoutError("the turn did not stop")
        outcome = handle.outcome()
        time.sleep(0.0005)
    stopped = time.time()
    return stopped - sent, server_finished(server, tag) - sent, handle.status


def runtime_paths(server: LocalServer, trials: int) -> dict[str, dict[str, list[Any]]]:
    results: dict[str, dict[str, list[Any]]] = {}
    runtime = AgentRuntime(runtime_config(server))
    try:
        runtime_trial(runtime, server)
        for label, load in (("alone", 0), ("beside 100 agents streaming 20 chunks/s", 100)):
            busy = [runtime.chat(runtime.create_agent(), BUSY) for _ in range(load)]
            stopped, closed, statuses, failed = [], [], [], []
            for i in range(trials):
                try:
                    a, b, status = runtime_trial(runtime, server)
                except TimeoutError:
                    failed.append(i)
                    continue
                stopped.append(a)
                closed.append(b)
                statuses.append(status)
            for handle in busy:
                handle.cancel()
            results[f"ChatHandle.cancel(), {label}"] = {
                "stopped": stopped,
                "closed": closed,
                "statuses": statuses,
                "failed": failed,
            }
    finally:
        runtime.shutdown(60)
    return results


def footer_cancelled(kernel: BenchKernel, msg_id: str) -> float | None:
    """When the CANCELLED footer of cell `msg_id` arrived."""
    for message in kernel.of(msg_id, "update_display_data", "display_data"):
        display_id = message.content.get("transient", {}).get("display_id", "")
        text = message.content.get("data", {}).get("text/plain", "")
        if display_id.endswith("-status") and "CANCELLED" in text:
            return message.at
    return None


def kernel_trial(kernel: BenchKernel, server: LocalServer, path: str, n: int) -> tuple:
    tag, text = prompt()
    name = f"c{n}"
    background = " --background" if path == "%agent cancel" else ""
    msg_id, _ = kernel.send(f"%%agent {name}{background}\n{text}")

    def streaming() -> bool:
        reply_id = first_display_id(kernel, msg_id)
        return reply_id is not None and any(
            m.content.get("transient", {}).get("display_id") == reply_id
            for m in kernel.of(msg_id, "update_display_data")
        )

    kernel.wait(streaming, 30)
    if path == "Cancel button":
        comm = kernel.wait(lambda: widget_comm(kernel, msg_id, "ButtonModel", "Cancel"), 10)
        sent = kernel.comm_msg(comm, {"method": "custom", "content": {"event": "click"}})
    elif path == "%agent cancel":
        kernel.reply(msg_id, 30)
        cancel_id, sent = kernel.send(f"%agent cancel {name}")
    else:
        sent = kernel.interrupt()
    try:
        stopped = kernel.wait(lambda: footer_cancelled(kernel, msg_id), WAIT)
    finally:
        kernel.reply(msg_id, 40)
        if path == "%agent cancel":
            kernel.reply(cancel_id, 40)
    return stopped - sent, server_finished(server, tag) - sent


def kernel_paths(server: LocalServer, trials: int) -> dict[str, dict[str, list[Any]]]:
    results: dict[str, dict[str, list[Any]]] = {}
    with tempfile.TemporaryDirectory() as home, agent_kernel(server, home) as kernel:
        count = 0
        for path in ("Cancel button", "%agent cancel", "kernel interrupt"):
            stopped, closed, failed = [], [], []
            for i in range(trials + 1):
                count += 1
                try:
                    a, b = kernel_trial(kernel, server, path, count)
                except TimeoutError:
                    failed.append(count)
                    continue
                if i:  # the first trial of each path warms it up
                    stopped.append(a)
                    closed.append(b)
            results[path] = {"stopped": stopped, "closed": closed, "failed": failed}
    return results


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    trials = 8 if quick else 25
    with LocalServer.start("scripted") as server:
        measured = runtime_paths(server, trials)
        try:
            measured.update(kernel_paths(server, trials))
            kernel_error = None
        except Exception as exc:
            kernel_error = f"{type(exc).__name__}: {exc}"
    rows = []
    for path, values in measured.items():
        closed, stopped = dist(values["closed"]), dist(values["stopped"])
        not_cancelled = [s for s in values.get("statuses", []) if s != "cancelled"]
        failed = values.get("failed", [])
        notes = [f"turns not cancelled: {not_cancelled}"] if not_cancelled else []
        if failed:
            notes.append(f"{len(failed)} trial(s) not stopped within {WAIT:g} s")
        rows.append(
            row(
                FIGURE,
                f"{path}: sent -> server saw the stream closed",
                show(closed, "ms", 1000, 1) + f", p95 {closed['p95'] * 1000:.1f} ms",
                f"turn stopped: {show(stopped, 'ms', 1000, 1)}",
                "—",
                TARGET,
                closed.get("p95", 1) < 0.100 and not notes,
                "; ".join(notes),
            )
        )
    if kernel_error is not None:
        for path in ("Cancel button", "%agent cancel", "kernel interrupt"):
            if path not in measured:
                rows.append(not_run(FIGURE, path, TARGET, kernel_error))
    return rows, {"seconds": measured, "kernel_error": kernel_error}


if __name__ == "__main__":
    main("cancel", __doc__, run)
