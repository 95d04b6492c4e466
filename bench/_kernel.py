"""A real Jupyter kernel for the benchmarks, driven the way a notebook front end drives it.

`BenchKernel` starts `python -m ipykernel_launcher` from any virtualenv (ours or an
incumbent's), records every IOPub message with its arrival time on a reader thread, and
sends execute, comm and interrupt requests through it. Times are `time.time()`, taken
when a message is sent or read, so that they compare with the local server's request log.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import KernelManager


@dataclass
class Message:
    at: float
    msg: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.msg["header"]["msg_type"])

    @property
    def parent(self) -> str | None:
        return self.msg.get("parent_header", {}).get("msg_id")

    @property
    def content(self) -> dict[str, Any]:
        return self.msg["content"]


class BenchKernel:
    """One kernel; use as a context manager."""

    def __init__(
        self,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        arguments: tuple[str, ...] = (),
    ) -> None:
        """Start the kernel with exactly `env` (default: this process's environment) and
        these command-line `arguments` (e.g. `--AgentMagics.base_url=...`)."""
        self.manager = KernelManager()
        self.manager._kernel_spec = KernelSpec(
            argv=[python, "-m", "ipykernel_launcher", "-f", "{connection_file}", *arguments],
            display_name="bench",
            language="python",
        )
        self.manager.start_kernel(env=dict(os.environ) if env is None else env)
        self.client = self.manager.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.messages: list[Message] = []
        self.replies: dict[str, Message] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="bench-iopub", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Own every socket (zmq sockets are not thread-safe): send what callers queued,
        then record what arrived."""
        channels = ((self.client.iopub_channel, self.messages), (self.client.shell_channel, None))
        poller = zmq.Poller()
        for channel, _ in channels:
            poller.register(channel.socket, zmq.POLLIN)
        while not self._stop.is_set():
            while not self._outbox.empty():
                action, done = self._outbox.get_nowait()
                sent = time.time()
                done.set_result((action(), sent))
            poller.poll(1)
            for channel, sink in channels:
                while channel.msg_ready():
                    message = Message(time.time(), channel.get_msg(timeout=0))
                    with self._changed:
                        if sink is None:
                            self.replies[message.parent or ""] = message
                        else:
                            sink.append(message)
                        self._changed.notify_all()

    def _on_reader(self, action: Callable[[], Any]) -> tuple[Any, float]:
        """Run `action` on the reader thread; returns its result and when it started."""
        done: concurrent.futures.Future[tuple[Any, float]] = concurrent.futures.Future()
        self._outbox.put((action, done))
        return done.result(timeout=30)

    def __enter__(self) -> BenchKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._reader.join(5)
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def send(self, code: str) -> tuple[str, float]:
        """Send an execute request; returns its msg_id and the time it was sent."""
        msg_id, sent = self._on_reader(lambda: self.client.execute(code, store_history=False))
        return str(msg_id), sent

    def wait(self, predicate: Callable[[], Any], timeout: float = 60) -> Any:
        """Wait (on the reader's notifications) until `predicate()` is truthy; return it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"kernel: condition not met in {timeout} s")
                self._changed.wait(min(left, 0.5))

    def reply(self, msg_id: str, timeout: float = 60) -> Message:
        message: Message = self.wait(lambda: self.replies.get(msg_id), timeout)
        return message

    def run(self, code: str, timeout: float = 60) -> tuple[Message, float]:
        """Execute and wait for the reply; returns it and the round trip in seconds."""
        msg_id, sent = self.send(code)
        reply = self.reply(msg_id, timeout)
        if reply.content.get("status") != "ok":
            raise RuntimeError(f"cell failed: {code[:80]!r}: {self.error_text(msg_id)}")
        return reply, reply.at - sent

    def of(self, msg_id: str, *types: str) -> list[Message]:
        return [m for m in list(self.messages) if m.parent == msg_id and m.type in types]

    def stdout(self, msg_id: str) -> str:
        return "".join(m.content.get("text", "") for m in self.of(msg_id, "stream"))

    def error_text(self, msg_id: str) -> str:
        errors = self.of(msg_id, "error")
        reply = self.replies.get(msg_id)
        if errors:
            return f"{errors[-1].content.get('ename')}: {errors[-1].content.get('evalue')}"
        return str(reply.content if reply else "no reply")

    def comm_msg(self, comm_id: str, data: dict[str, Any]) -> float:
        """Send a comm message (a widget event) on the shell channel; returns when sent."""
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        return self._on_reader(lambda: self.client.shell_channel.send(msg))[1]

    def interrupt(self) -> float:
        sent = time.time()
        self.manager.interrupt_kernel()
        return sent


def widget_comm(kernel: BenchKernel, msg_id: str, model: str, description: str) -> str | None:
    """The comm id of a widget opened by cell `msg_id` (e.g. its Cancel button)."""
    for message in kernel.of(msg_id, "comm_open"):
        state = message.content.get("data", {}).get("state", {})
        if state.get("_model_name") == model and state.get("description") == description:
            return str(message.content["comm_id"])
    return None


def display_updates(kernel: BenchKernel, msg_id: str, display_id: str | None = None) -> list:
    """update_display_data messages of a cell, optionally for one display id."""
    return [
        m
        for m in kernel.of(msg_id, "update_display_data")
        if display_id is None or m.content.get("transient", {}).get("display_id") == display_id
    ]


def first_display_id(kernel: BenchKernel, msg_id: str) -> str | None:
    """The display id of the cell's first display_data (the %%agent reply display)."""
    for message in kernel.of(msg_id, "display_data"):
        display_id = message.content.get("transient", {}).get("display_id")
        if display_id:
            return str(display_id)
    return None


def agent_kernel(server: Any, home: str, python: str = sys.executable) -> BenchKernel:
    """A kernel with `%load_ext agentrt_jupyter` pointed at the benchmark's server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
    env.update(GOOGLE_API_KEY=server.token, AGENTRT_HOME=home)
    kernel = BenchKernel(python, env)
    kernel.run(
        "%load_ext agentrt_jupyter\n"
        f"%config AgentMagics.base_url = {server.url!r}\n"
        "%config AgentMagics.store_path = ''\n"
    )
    return kernel
