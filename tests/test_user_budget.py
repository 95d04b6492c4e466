"""A user's daily budget, set by the admin (never the user's cell), holds across all of
the user's kernels: each kernel here is a real process with its own AgentRuntime."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, InvalidConfig, QuotaExceeded, RuntimeConfig
from agentrt_jupyter.budget import (
    POLICY_VARIABLE,
    TOKENS_VARIABLE,
    USD_VARIABLE,
    BudgetPolicy,
    UserBudget,
    load_policy,
)
from agentrt_jupyter.config import runtime_config as checked_runtime_config
from agentrt_jupyter.conversation import Usage
from agentrt_jupyter.notebook.display import footer_line
from agentrt_jupyter.notebook.extension import loaded_magics
from agentrt_jupyter.notebook.magics import AgentMagics
from agentrt_jupyter.server.process import LocalServer

from .conftest import kernel_settings, requests_with, runtime_config
from .shell_helpers import agent_shell, run

SPAWN = multiprocessing.get_context("spawn")
PROCESS_TIMEOUT = 90.0


def kernel_turns(settings: dict[str, Any], prompts: list[str], lift: bool, results: Any) -> None:
    """One kernel of the user: a turn per prompt; what each came to (text, or the error's
    type, scope and message). `lift`: the cell first tries to lift the budget itself."""
    outcomes: list[Any] = []
    try:
        if lift:
            os.environ.pop(TOKENS_VARIABLE, None)
            os.environ[TOKENS_VARIABLE] = str(10**12)
        with AgentRuntime(RuntimeConfig(**settings)) as runtime:
            budget = runtime.quota_registry.budget
            for prompt in prompts:
                try:
                    outcomes.append(["ok", runtime.create_agent().chat(prompt).text()])
                except QuotaExceeded as exc:
                    outcomes.append([type(exc).__name__, exc.scope, str(exc), exc.retry_after])
            outcomes.append(["left", budget.status().tokens_left if budget else None])
    except Exception as exc:
        outcomes.append(["failed", repr(exc)])
    results.put(outcomes)


def kernel_map(settings: dict[str, Any], prompts: list[str], results: Any) -> None:
    """One kernel mapping `prompts` one row at a time: (status, error) per row."""
    try:
        with AgentRuntime(RuntimeConfig(**settings)) as runtime:
            out = runtime.map(pd.DataFrame({"text": prompts}), "Echo {text}", concurrency=1)
            results.put([[row.status, row.error] for row in out.itertuples()])
    except Exception as exc:
        results.put([["failed", repr(exc)]])


def run_kernel(target: Any, *args: Any) -> Any:
    """Run one kernel process to its end; what it reported."""
    results = SPAWN.Queue()
    process = SPAWN.Process(target=target, args=(*args, results), daemon=True)
    process.start()
    answer = results.get(timeout=PROCESS_TIMEOUT)
    process.join(PROCESS_TIMEOUT)
    assert process.exitcode == 0
    return answer


def tokens_of_one_turn(server: LocalServer, prompt: str) -> int:
    with AgentRuntime(runtime_config(server)) as runtime:
        agent = runtime.create_agent()
        agent.chat(prompt).text()
        usage = runtime.total_usage(agent)
    return usage.prompt_tokens + usage.candidates_tokens + usage.thoughts_tokens


@pytest.fixture
def hub_user(monkeypatch: pytest.MonkeyPatch, tag: str) -> str:
    """A user of their own for this test (the spawned kernels inherit the variable)."""
    user = f"user-{tag}"
    monkeypatch.setenv("JUPYTERHUB_USER", user)
    for variable in (POLICY_VARIABLE, TOKENS_VARIABLE, USD_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    return user


def test_a_users_daily_budget_stops_their_third_kernel(
    server: LocalServer, store_path: Path, tag: str, hub_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [f"{tag} kernel{k} hi" for k in range(3)]  # the same length: the same tokens
    turn = tokens_of_one_turn(server, f"{tag} kernelX hi")
    monkeypatch.setenv(TOKENS_VARIABLE, str(2 * turn - 1))  # two turns pass it
    settings = kernel_settings(server, store_path)
    first = run_kernel(kernel_turns, settings, prompts[:1], False)
    second = run_kernel(kernel_turns, settings, prompts[1:2], False)
    third = run_kernel(kernel_turns, settings, prompts[2:], False)
    assert [first[0][0], second[0][0]] == ["ok", "ok"], (first, second)
    assert first[-1] == ["left", turn - 1]
    name, scope, message, retry_after = third[0]
    assert (name, scope) == ("QuotaExceeded", "budget")
    assert "resets at 00:00 UTC" in message and hub_user in message
    midnight = (int(time.time()) // 86400 + 1) * 86400
    assert retry_after == pytest.approx(midnight - time.time(), abs=60)
    assert requests_with(server, prompts[2]) == []  # failed at once: nothing was sent


def test_a_users_spending_on_postgresql_stops_their_next_kernel(
    server: LocalServer,
    postgres_database: str,
    tag: str,
    hub_user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKENS_VARIABLE, "1")
    settings = kernel_settings(server, postgres_database)
    first = run_kernel(kernel_turns, settings, [f"{tag} one"], False)
    second = run_kernel(kernel_turns, settings, [f"{tag} two"], False)
    assert first[0][0] == "ok", first
    assert second[0][:2] == ["QuotaExceeded", "budget"], second
    assert len(requests_with(server, tag)) == 1


def test_a_cell_cannot_lift_the_budget_its_kernel_started_with(
    server: LocalServer, store_path: Path, tag: str, hub_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKENS_VARIABLE, "1")
    prompts = [f"{tag} one", f"{tag} two"]
    outcomes = run_kernel(kernel_turns, kernel_settings(server, store_path), prompts, True)
    assert outcomes[0][0] == "ok"
    assert outcomes[1][:2] == ["QuotaExceeded", "budget"]
    assert len(requests_with(server, tag)) == 1


def test_budgets_are_not_settings_a_user_can_give() -> None:
    with pytest.raises(InvalidConfig):
        checked_runtime_config({"budget_tokens_per_day": 10**9})
    assert not [name for name in AgentMagics.class_trait_names() if "budget" in name]


def test_a_map_past_the_budget_stops_with_the_budget_error(
    server: LocalServer, store_path: Path, tag: str, hub_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKENS_VARIABLE, "1")
    prompts = [f"{tag} row{i}" for i in range(4)]
    rows = run_kernel(kernel_map, kernel_settings(server, store_path), prompts)
    assert rows[0][0] == "ok", rows
    # rows admitted beside the one that met the budget fail at once; the rest never start
    assert {status for status, _ in rows[1:]} <= {"error", "skipped"}, rows
    assert rows[-1][0] == "skipped", rows
    assert all("daily budget" in error for _, error in rows[1:]), rows
    assert len(requests_with(server, tag)) == 1


def test_the_policy_file_sets_everyone_and_each_user_and_the_variables_win(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "[budget]\ntokens_per_day = 1000\nusd_per_day = 2.5\n"
        "[budget.users.alice]\ntokens_per_day = 5000\n"
    )
    env = {POLICY_VARIABLE: str(policy)}
    assert load_policy("bob", env) == BudgetPolicy(1000, 2.5, str(policy))
    assert load_policy("alice", env) == BudgetPolicy(5000, 2.5, str(policy))
    both = load_policy("alice", {**env, TOKENS_VARIABLE: "7", USD_VARIABLE: "0.5"})
    assert (both.tokens_per_day, both.usd_per_day) == (7, 0.5)
    as_json = tmp_path / "policy.json"
    as_json.write_text(json.dumps({"budget": {"users": {"bob": {"usd_per_day": 1}}}}))
    assert load_policy("bob", {POLICY_VARIABLE: str(as_json)}).usd_per_day == 1.0


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({TOKENS_VARIABLE: "lots"}, "budget_tokens_per_day"),
        ({USD_VARIABLE: "-1"}, "budget_usd_per_day"),
        ({POLICY_VARIABLE: "/nonexistent/policy.toml"}, "budget_policy"),
    ],
)
def test_a_policy_the_admin_got_wrong_is_refused_naming_it(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidConfig) as refused:
        load_policy("bob", env)
    assert refused.value.field == field


def test_the_budget_resets_at_utc_midnight() -> None:
    now = [86400 * 20_000 - 10.0]  # ten seconds before a UTC midnight
    budget = UserBudget(BudgetPolicy(10, None, "test"), "bob", None, clock=lambda: now[0])
    budget.spend("gemini-2.5-flash", Usage(prompt_tokens=6, candidates_tokens=6))
    with pytest.raises(QuotaExceeded) as spent:
        budget.check()
    assert spent.value.retry_after == pytest.approx(10.0)
    assert budget.status().line().startswith("budget: 0 of 10 tokens left today")
    now[0] += 10.0
    budget.check()
    assert budget.status().tokens_left == 10


def test_the_footer_and_agent_usage_show_what_is_left_of_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with agent_shell(tmp_path) as ip:
        assert run(ip, "%%agent budgeted --out reply\nhello") is None
        runtime = loaded_magics(ip).runtime
        budget = UserBudget(BudgetPolicy(1000, None, "test"), "bob", runtime.quota_registry.board)
        runtime.quota_registry.budget = budget
        budget.spend("scripted", Usage(prompt_tokens=100, candidates_tokens=50))
        capsys.readouterr()
        assert run(ip, "%agent usage budgeted") is None
        left = "budget: 850 of 1,000 tokens left today (resets 00:00 UTC)"
        assert left in capsys.readouterr().out
        footer = footer_line(ip.user_ns["reply"], None, budget.status().line())
    assert footer.endswith(left)
