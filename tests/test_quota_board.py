"""Kernels on one key share its quota through the quota board: each kernel is a real
process with its own AgentRuntime, against the shared local server; what the kernels did
is read from the server's request log (its timestamps), not from their insides."""

from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, RuntimeConfig, Waiting
from agentrt_jupyter.batch.controller import RateController, Start, Wait
from agentrt_jupyter.quota import BOARD_CACHE, QuotaRegistry, parse_quota_error
from agentrt_jupyter.quotaboard import SLOT_TTL, QuotaBoard, Spent
from agentrt_jupyter.server.process import LocalServer

from .conftest import kernel_settings, requests_with, runtime_config
from .machine import free_port

SPAWN = multiprocessing.get_context("spawn")
RETRY_DELAY = 2.0
PROCESS_TIMEOUT = 90.0


def kernel_chat(
    settings: dict[str, Any],
    prompt: str,
    go: Any,
    heard_wait: Any,
    results: Any,
) -> None:
    """One kernel: a runtime of its own; after `go`, one turn of `prompt`; sets
    `heard_wait` when the turn waits out a 429; puts (prompt, text or error) in `results`."""
    try:
        with AgentRuntime(RuntimeConfig(**settings)) as runtime:
            if go is not None and not go.wait(PROCESS_TIMEOUT):
                raise TimeoutError("never told to go")
            handle = runtime.create_agent().chat(prompt)
            for event in handle:
                if isinstance(event, Waiting) and heard_wait is not None:
                    heard_wait.set()
            results.put((prompt, handle.text()))
    except Exception as exc:
        results.put((prompt, f"failed: {exc!r}"))


def kernel_map(settings: dict[str, Any], prompts: list[str], rpm: float, results: Any) -> None:
    """One kernel mapping `prompts` at `rpm`; puts (first prompt, row statuses)."""
    try:
        with AgentRuntime(RuntimeConfig(**settings)) as runtime:
            frame = pd.DataFrame({"text": prompts})
            out = runtime.map(frame, "Echo {text}", rpm=rpm, concurrency=4)
            results.put((prompts[0], sorted(set(out["status"]))))
    except Exception as exc:
        results.put((prompts[0], f"failed: {exc!r}"))


def start(target: Any, *args: Any) -> Any:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def collect(results: Any, processes: list[Any]) -> dict[str, Any]:
    answers = dict(results.get(timeout=PROCESS_TIMEOUT) for _ in processes)
    for process in processes:
        process.join(PROCESS_TIMEOUT)
        assert process.exitcode == 0
    return answers


def two_kernels_one_429(
    server: LocalServer, store: Path | str | None, tag: str
) -> tuple[float, float]:
    """Kernel A meets a 429 (RetryInfo 2 s); kernel B sends once A waits. (When A's 429
    was answered, when B's request arrived), from the server's log."""
    settings = kernel_settings(server, store)
    first, second = f"{tag} first", f"{tag} second"
    server.push_faults(f"429 minute {RETRY_DELAY:g}s", match=first)
    go, heard_wait, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    kernel_a = start(kernel_chat, settings, first, None, heard_wait, results)
    kernel_b = start(kernel_chat, settings, second, go, None, results)
    assert heard_wait.wait(PROCESS_TIMEOUT), "kernel A never waited out its 429"
    go.set()
    answers = collect(results, [kernel_a, kernel_b])
    assert all(not text.startswith("failed") for text in answers.values()), answers
    limited = [r for r in requests_with(server, first) if r["status"] == 429]
    sent = [r for r in requests_with(server, second)]
    assert len(limited) == 1 and len(sent) == 1, (limited, sent)
    return limited[0]["finished"], sent[0]["received"]


def test_a_429_in_one_kernel_makes_another_on_the_key_wait_its_window(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    limited_at, other_sent_at = two_kernels_one_429(server, store_path, tag)
    assert other_sent_at >= limited_at + RETRY_DELAY - 0.05


def test_a_429_in_one_kernel_makes_another_wait_through_postgresql(
    server: LocalServer, postgres_database: str, tag: str
) -> None:
    import psycopg  # the fixture has checked it is there

    from agentrt_jupyter.stores.postgres import setup

    setup(postgres_database)  # the store's setup makes the board's tables too
    limited_at, other_sent_at = two_kernels_one_429(server, postgres_database, tag)
    assert other_sent_at >= limited_at + RETRY_DELAY - 0.05
    with psycopg.connect(postgres_database) as reader:
        hits = reader.execute("SELECT hits FROM agentrt.quota_blocks").fetchall()
    assert hits == [(1,)]


def test_without_a_store_each_kernel_keeps_its_own_quota(server: LocalServer, tag: str) -> None:
    limited_at, other_sent_at = two_kernels_one_429(server, None, tag)
    assert other_sent_at < limited_at + RETRY_DELAY


def test_a_maps_rpm_holds_for_the_key_across_kernels(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    rows, rpm = 6, 600.0  # 10 starts a second for the key, whoever starts them
    results = SPAWN.Queue()
    settings = kernel_settings(server, store_path)
    kernels = [
        start(kernel_map, settings, [f"{tag} k{k} row{i}" for i in range(rows)], rpm, results)
        for k in range(2)
    ]
    answers = collect(results, kernels)
    assert all(statuses == ["ok"] for statuses in answers.values()), answers
    starts = sorted(r["received"] for r in requests_with(server, tag))
    assert len(starts) == 2 * rows
    alone = (rows - 1) * 60 / rpm  # how long each kernel's own pacing takes
    shared = (2 * rows - 1) * 60 / rpm  # the key's pacing: the kernels take turns
    assert starts[-1] - starts[0] >= alone + 0.8 * (shared - alone), starts


def test_a_killed_kernels_slots_free_after_their_lease(store_path: Path) -> None:
    now = [1_000.0]
    board = QuotaBoard.sqlite(store_path, clock=lambda: now[0])
    assert board.acquire_slot("cred", "dead-kernel-1", 2)
    assert board.acquire_slot("cred", "dead-kernel-2", 2)
    assert board.acquire_slot("cred", "live-kernel", 2) is False
    now[0] += SLOT_TTL + 0.1
    assert board.acquire_slot("cred", "live-kernel", 2)
    assert board.slots_held("cred") == 1
    board.close()


def test_a_live_kernel_keeps_its_slots_past_the_lease_by_renewing_them(
    store_path: Path,
) -> None:
    now = [1_000.0]
    board = QuotaBoard.sqlite(store_path, clock=lambda: now[0])
    assert board.acquire_slot("cred", "run1-0", 1)
    now[0] += SLOT_TTL * 0.9
    board.renew_slots("cred", "run1")
    now[0] += SLOT_TTL * 0.9
    assert board.acquire_slot("cred", "run2-0", 1) is False
    assert board.slots_held("cred") == 1
    board.close()


def test_the_keys_tokens_of_the_last_minute_add_up_across_kernels(store_path: Path) -> None:
    now = [1_000.0]
    one, two = (QuotaBoard.sqlite(store_path, clock=lambda: now[0]) for _ in range(2))
    one.add_tokens("cred", 300)
    now[0] += 30
    two.add_tokens("cred", 200)
    assert one.minute_tokens("cred") == 500
    controller = RateController(concurrency=4, max_concurrency=4, tpm=600)
    assert controller.admit("x" * 400, minute_tokens=500) == Wait(1.0)  # ~200 more: past 600
    now[0] += 31  # the first kernel's tokens leave the minute
    assert two.minute_tokens("cred") == 200
    assert isinstance(controller.admit("x" * 400, minute_tokens=200), Start)
    one.close()
    two.close()


def test_the_shared_rate_books_starts_one_interval_apart_across_kernels(
    store_path: Path,
) -> None:
    now = [1_000.0]
    one, two = (QuotaBoard.sqlite(store_path, clock=lambda: now[0]) for _ in range(2))
    assert one.take_start("cred", 0.5) == 0.0
    assert two.take_start("cred", 0.5) == pytest.approx(0.5)  # booked behind it
    assert one.take_start("cred", 0.5) == pytest.approx(1.0)
    now[0] += 5.0
    assert two.take_start("cred", 0.5) == 0.0  # an idle key saves no starts up
    one.close()
    two.close()


def test_a_broken_board_falls_back_to_the_kernels_own_quota_and_says_so_once(
    server: LocalServer, store_path: Path, tag: str, caplog: pytest.LogCaptureFixture
) -> None:
    AgentRuntime(runtime_config(server, store_path=store_path)).shutdown(10.0)
    with sqlite3.connect(store_path) as db:  # a board table no query of ours fits
        db.execute("DROP TABLE IF EXISTS quota_blocks")
        db.execute("CREATE TABLE quota_blocks (unrelated TEXT)")
    server.push_faults("429 minute 0.2s", "429 minute 0.2s", match=tag)
    with caplog.at_level(logging.WARNING, "agentrt_jupyter"):
        runtime = AgentRuntime(runtime_config(server, store_path=store_path))
        try:
            assert runtime.create_agent().chat(f"{tag} hello").text()
        finally:
            runtime.shutdown(10.0)
    warnings = [r for r in caplog.records if "quota board unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert [r["status"] for r in requests_with(server, tag)] == [429, 429, 200]


def test_the_servers_rate_limit_answers_past_n_a_second_with_a_retryable_429(
    server: LocalServer, tag: str
) -> None:
    def generate() -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"{server.url}/v1beta/models/gemini-2.5-flash:generateContent",
            data=json.dumps({"contents": [{"parts": [{"text": tag}]}]}).encode(),
            headers={"x-goog-api-key": server.token, "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    server.set_rate_limit(2)
    try:
        answers = [generate() for _ in range(3)]
    finally:
        server.set_rate_limit(None)
    assert [status for status, _ in answers] == [200, 200, 429]
    info = parse_quota_error(answers[2][1])
    assert info.scope == "minute" and info.retry_after is not None
    assert 0 < info.retry_after <= 0.5
    assert generate()[0] == 200  # lifted


def test_a_block_published_by_one_registry_is_a_new_episode_for_another_on_the_file(
    store_path: Path,
) -> None:
    first = QuotaRegistry(board=QuotaBoard.sqlite(store_path))
    second = QuotaRegistry(board=QuotaBoard.sqlite(store_path))
    controller = RateController(concurrency=8, max_concurrency=8)
    controller.quota_baseline(0, 0.0)
    first.record_hit("cred", 30.0, quota_id="PerMinute")
    seen = second.refresh("cred")
    assert seen.blocked and seen.seconds_left == pytest.approx(30.0, abs=0.5)
    assert (seen.shared_episodes, seen.last_quota_id) == (1, "PerMinute")
    assert controller.observe_quota(seen.total_hits, seen.blocked_at)  # the map halves once
    assert controller.concurrency == 4
    first.record_hit("cred", 30.0)  # the same episode, still on
    time.sleep(BOARD_CACHE)  # the read cache's age, not a synchronisation
    again = second.refresh("cred")
    assert not controller.observe_quota(again.total_hits, again.blocked_at)
    assert controller.concurrency == 4


def test_a_postgresql_that_is_gone_leaves_each_kernel_its_own_quota(
    caplog: pytest.LogCaptureFixture,
) -> None:
    board = QuotaBoard.postgres(f"postgresql://nobody@127.0.0.1:{free_port()}/agentrt")
    registry = QuotaRegistry(board=board)
    with caplog.at_level(logging.WARNING, "agentrt_jupyter"):
        assert registry.record_hit("cred", 5.0) == pytest.approx(5.0)
        assert registry.refresh("cred").blocked
        assert board.take_start("cred", 1.0) == 0.0
    assert board.faults == 1  # then left alone until RETRY_AFTER
    assert len([r for r in caplog.records if "quota board unavailable" in r.getMessage()]) == 1


def test_hub_users_on_their_own_roles_share_the_board_the_admin_set_up(
    postgres_database: str, tag: str
) -> None:

    from agentrt_jupyter.stores.postgres import setup

    from .postgres import create_login_role

    setup(postgres_database)  # the store's setup makes the board's tables too
    alice, bob = (
        create_login_role(postgres_database, f"{name}_{tag}", "pw", ["agentrt_users"])
        for name in ("alice", "bob")
    )
    boards = [QuotaBoard.postgres(url) for url in (alice, bob)]
    alice_board, bob_board = boards
    until = time.time() + 30
    alice_board.publish_hit(
        "cred",
        blocked_until=until,
        episode_started=time.time(),
        episodes=1,
        quota_id=None,
        scope="minute",
    )
    seen = bob_board.read("cred")
    assert seen is not None and seen.blocked_until == pytest.approx(until)
    assert alice_board.take_start("cred", 1.0) == 0.0
    assert bob_board.take_start("cred", 1.0) == pytest.approx(1.0, abs=0.1)
    assert [board.faults for board in boards] == [0, 0]
    for board in boards:
        board.close()


def test_a_database_restart_between_two_calls_goes_unnoticed_by_the_board(
    postgres_cluster: Any, postgres_database: str
) -> None:
    board = QuotaBoard.postgres(postgres_database)
    assert board.take_start("cred", 1.0) == 0.0
    try:
        postgres_cluster.stop("fast")
        postgres_cluster.start()
    finally:
        if not postgres_cluster.running():
            postgres_cluster.start()
    assert 0 < board.take_start("cred", 1.0) <= 1.0  # booked behind the first: a new connection
    assert board.faults == 0
    board.close()


def test_a_hub_user_cannot_lower_or_forge_what_the_board_counts_against_budgets(
    postgres_database: str, tag: str
) -> None:
    import psycopg

    from agentrt_jupyter.stores.postgres import setup

    from .postgres import create_login_role

    setup(postgres_database)
    alice, bob = (
        create_login_role(postgres_database, f"{name}_{tag}", "pw", ["agentrt_users"])
        for name in ("alice", "bob")
    )
    board = QuotaBoard.postgres(bob)
    board.add_usage("whoever-the-hub-says", "2026-12-06", 500, 0.5)
    assert board.spent("anyone", "2026-12-06") == Spent(500, 0.5)  # under bob's role
    board.close()
    refused = (
        "UPDATE agentrt.quota_usage SET tokens = 0",
        "DELETE FROM agentrt.quota_usage",
        f"INSERT INTO agentrt.quota_usage VALUES ('alice_{tag}', '2026-12-06', 10**9, 0)",
        f"INSERT INTO agentrt.quota_usage VALUES ('bob_{tag}', '2026-12-07', -5, 0)",
    )
    for statement in refused:
        with psycopg.connect(bob, autocommit=True) as conn, pytest.raises(psycopg.Error):
            conn.execute(statement.replace("10**9", "1000000000"))
    with psycopg.connect(alice, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM agentrt.quota_usage").fetchone() == (0,)
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        rows = admin.execute("SELECT user_name, tokens FROM agentrt.quota_usage").fetchall()
    assert rows == [(f"bob_{tag}", 500)]
