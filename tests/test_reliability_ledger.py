"""The runtime's ledger holds every API call once (issue 17 item 7).

An agent that continues a retired agent's conversation (reconfigured, resumed) carries its
rows; deleting it later retired them a second time, so `runtime.ledger()` doubled. The
walk below reconciles the server's request log with the ledger after every step.
"""

from __future__ import annotations

from pathlib import Path

from agentrt_jupyter import AgentRuntime, TurnError
from agentrt_jupyter.server.process import LocalServer

from .reliability_helpers import Provider, ServerWitness, settle


def reconcile(runtime: AgentRuntime, witness: ServerWitness, tag: str, step: str) -> int:
    rows = runtime.ledger()
    requests = [r for r in witness.requests() if tag in str(r.get("body"))]
    assert len(rows) == len(set(rows)), f"{step}: a call appears twice in the ledger"
    assert len(rows) == len(requests), f"{step}: {len(rows)} rows for {len(requests)} requests"
    return len(rows)


def test_every_call_is_in_the_ledger_once_across_delete_shutdown_and_recreation(
    server: LocalServer, tag: str, provider: Provider, store_path: Path
) -> None:
    witness = ServerWitness(server)
    runtime = AgentRuntime(provider.config(store_path=store_path))
    try:
        agent = runtime.create_agent(name="default")
        agent.chat(f"one {tag}").result(timeout=20)
        agent.chat(f"two {tag}").result(timeout=20)
        dropped = settle(agent.chat(f"@@fault drop_headers\nthree {tag}"), 30)
        assert isinstance(dropped, TurnError)
        first = reconcile(runtime, witness, tag, "before delete")
        runtime.disconnect("default")
        runtime.resume("default", temperature=0.5)  # carries the rows of the first
        assert reconcile(runtime, witness, tag, "reconfigured") == first
        runtime.delete("default")
        assert reconcile(runtime, witness, tag, "deleted") == first
        runtime.create_agent(name="default").chat(f"four {tag}").result(timeout=20)
        reconcile(runtime, witness, tag, "re-created")
        runtime.shutdown_agent("default")
        reconcile(runtime, witness, tag, "shut down")
        again = runtime.create_agent(name="default", fresh=True)
        again.chat(f"five {tag}").result(timeout=20)
        runtime.disconnect("default")
        runtime.resume("default").chat(f"six {tag}").result(timeout=20)
        runtime.delete("default")
        assert reconcile(runtime, witness, tag, "resumed and deleted") == first + 3
    finally:
        runtime.shutdown(10)
