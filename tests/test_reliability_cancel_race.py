"""A cancel that lands as a tool's answer arrives still cancels the turn (issue 17 item 9).

Python 3.11's `asyncio.wait_for` returns the inner result when its caller is cancelled
in the same loop step as the inner call finishes, swallowing the cancel: the turn went on
to its next model call and completed (2 of 1,000 fuzzed cancels of a turn in a tool).
Here the cancel is placed at exactly that moment: the tool's own task, once done, cancels
the turn's task (what `ChatHandle.cancel()` does on the loop).
"""

from __future__ import annotations

import asyncio

from agentrt_jupyter import AgentRuntime, TurnCancelled

from .reliability_helpers import settle


def test_a_cancel_arriving_with_the_tools_answer_cancels_the_turn(
    rt: AgentRuntime, tag: str
) -> None:
    async def answer_then_cancel() -> str:
        """Answer; the turn is cancelled the moment this answer is ready."""
        turn_task = next(t for t in asyncio.all_tasks() if t.get_name() == "turn:racer")
        me = asyncio.current_task()
        assert me is not None
        me.add_done_callback(lambda _: turn_task.cancel())
        return "answered"

    agent = rt.create_agent(name="racer", tools=[answer_then_cancel])
    outcome = settle(agent.chat(f"@@call answer_then_cancel {{}}\n{tag}"), 20)
    assert isinstance(outcome, TurnCancelled), f"the turn ended {outcome!r}"
    assert [e.status for e in agent.ledger()] == ["ok"], "the follow-up call was made"
