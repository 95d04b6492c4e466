"""Faults on the database path, all real: the server stopped mid-turn (`pg_ctl stop -m
immediate`) and started again, a table locked past the statement timeout, a server that
accepts and never answers, a role that may not make the schema, and several processes
writing at once. Every one ends typed or is written; nothing is lost silently."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrt_jupyter import AgentRuntime, FakeBackend, RuntimeConfig, registry
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.content import TextPart
from agentrt_jupyter.conversation import ConversationMessage
from agentrt_jupyter.errors import ConversationInUse, StoreError, TurnStoreError
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.stores.pgstore import PgStore

from .conftest import requests_with
from .postgres import PostgresCluster, create_login_role

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).parent.parent


def stored_counts(url: str) -> dict[str, int]:
    """Ledger rows and model messages in the database, whoever wrote them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT kind, count(*) FROM agentrt.records WHERE kind = 'ledger'"
            " OR (kind = 'message' AND role = 'model') GROUP BY kind"
        ).fetchall()
    return {kind: int(count) for kind, count in rows}


@pytest.fixture
def cluster_restarted(postgres_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The session's cluster, started again after the test whatever it did to it."""
    yield postgres_cluster
    if not postgres_cluster.running():
        postgres_cluster.start()


def test_the_database_stopped_mid_turn_ends_it_typed_then_the_runtime_reconnects(
    cluster_restarted: PostgresCluster,
    postgres_database: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "HEARTBEAT_SECONDS", 0.2)

    def handler(request: ModelRequest) -> str:
        if request.messages[-1].text == "crash":
            cluster_restarted.stop("immediate")
        return f"Echo: {request.messages[-1].text}"

    echo = FakeBackend(handler)
    config = RuntimeConfig(store_url=postgres_database, store_path=None)
    with (
        caplog.at_level(logging.WARNING, logger="agentrt_jupyter"),
        AgentRuntime(config, backend_factory=lambda endpoint: echo) as runtime,
    ):
        agent = runtime.create_agent(name="worker")
        agent.chat("kept").text(timeout=10)
        with pytest.raises(TurnStoreError, match="cannot be reached"):
            agent.chat("crash").text(timeout=10)
        assert agent.chat("while it is down").text(timeout=10) == "Echo: while it is down"
        assert runtime.store_problem is not None
        cluster_restarted.start()
        version = -1
        while runtime.store_problem is not None:  # the heartbeat reconnects
            version, _ = runtime.wait_for_change(version, timeout=10)
        runtime.create_agent(name="after").chat("stored again").text(timeout=10)
        agent.chat("still unstored").text(timeout=10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("no longer stored" in w for w in warnings) == 1
    assert sum("stored again" in w for w in warnings) == 1
    assert len(echo.requests) == 5
    assert stored_counts(postgres_database) == {"ledger": 2, "message": 2}


def test_a_restart_between_turns_goes_unnoticed_and_every_turn_is_stored(
    cluster_restarted: PostgresCluster, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    echo = FakeBackend(lambda request: f"Echo: {request.messages[-1].text}")
    config = RuntimeConfig(store_url=postgres_database, store_path=None)
    with (
        caplog.at_level(logging.WARNING, logger="agentrt_jupyter"),
        AgentRuntime(config, backend_factory=lambda endpoint: echo) as runtime,
    ):
        agent = runtime.create_agent(name="worker")
        agent.chat("before").text(timeout=10)
        for mode in ("fast", "immediate"):
            cluster_restarted.stop(mode)
            cluster_restarted.start()
            agent.chat(f"after a {mode} restart").text(timeout=10)
        assert runtime.store_problem is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert stored_counts(postgres_database) == {"ledger": 3, "message": 3}


def test_a_table_locked_past_the_statement_timeout_is_a_store_error_then_works(
    postgres_database: str,
) -> None:
    import psycopg

    with PgStore(postgres_database, statement_timeout=0.5) as store:
        cid = store.create("", "stalled", {})
        with psycopg.connect(postgres_database) as locker:
            locker.execute("LOCK TABLE agentrt.records IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"did not answer within 0\.5 s"):
                store.append_message(cid, ConversationMessage("user", (TextPart("q"),), 1))
            assert time.monotonic() - started < 5
        store.append_message(cid, ConversationMessage("user", (TextPart("q"),), 1))
        loaded = store.load(cid)
        assert loaded is not None and [m.text for m in loaded.conversation.messages] == ["q"]


def test_a_server_that_never_answers_is_a_store_error_within_the_connect_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections in the backlog, never says a word
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot be reached") as raised:
            PgStore(f"postgresql://u:hunter2@127.0.0.1:{port}/db", connect_timeout=1.0)
        assert time.monotonic() - started < 10
    assert "hunter2" not in str(raised.value)


def test_a_role_that_may_not_make_the_schema_leaves_nothing_and_the_runtime_goes_on(
    postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    url = create_login_role(postgres_database, "no_ddl", "pw")
    with caplog.at_level(logging.WARNING, logger="agentrt_jupyter"):
        echo = FakeBackend(lambda request: "fine")
        config = RuntimeConfig(store_url=url, store_path=None)
        with AgentRuntime(config, backend_factory=lambda endpoint: echo) as runtime:
            assert isinstance(runtime.store_problem, StoreError)
            assert "not permitted" in str(runtime.store_problem)
            assert runtime.create_agent(name="n").chat("hi").text(timeout=10) == "fine"
    assert [r for r in caplog.records if "will not be stored" in r.getMessage()]
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('agentrt.meta')").fetchone() == (None,)


def test_a_lost_lease_ends_the_old_writers_turn_typed_and_keeps_its_store(
    postgres_database: str,
) -> None:
    echo = FakeBackend(lambda request: f"Echo: {request.messages[-1].text}")
    config = RuntimeConfig(store_url=postgres_database, store_path=None)
    with (
        AgentRuntime(config, backend_factory=lambda endpoint: echo) as first,
        AgentRuntime(config, backend_factory=lambda endpoint: echo) as second,
    ):
        old = first.create_agent(name="shared")
        old.chat("first writer").text(timeout=10)
        with pytest.raises(ConversationInUse):
            second.resume("shared")
        second.resume("shared", take_over=True).chat("second writer").text(timeout=10)
        with pytest.raises(TurnStoreError) as lost:
            old.chat("still mine?").text(timeout=10)
        assert isinstance(lost.value.cause, ConversationInUse)
        assert first.store_problem is None and second.store_problem is None
    assert stored_counts(postgres_database) == {"ledger": 2, "message": 2}


WRITER = textwrap.dedent(
    """
    import sys
    from agentrt_jupyter import AgentRuntime, RuntimeConfig
    url, name, turns, base_url, token, tag = sys.argv[1:7]
    config = RuntimeConfig(
        store_url=url, store_path=None, base_url=base_url, api_key=token, api_version="v1beta"
    )
    with AgentRuntime(config) as runtime:
        agent = runtime.create_agent(name=name)
        for turn in range(int(turns)):
            agent.chat(f"@@reply {name} {turn}\\n{tag}").text(timeout=30)
    """
)


def load_size() -> tuple[int, int]:
    """Processes x turns: the issue's 20x20, or $AGENTRT_PG_LOAD (e.g. "5x5")."""
    processes, _, turns = os.environ.get("AGENTRT_PG_LOAD", "20x20").partition("x")
    return int(processes), int(turns)


def test_counts_reconcile_across_processes_writing_at_once(
    postgres_database: str, server: LocalServer, tag: str
) -> None:
    """Kernels (processes) on one PostgreSQL, through the real SDK to the local server:
    requests the server saw = ledger rows = stored replies."""
    processes, turns = load_size()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arguments = (str(turns), server.url, server.token, tag)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, postgres_database, f"w{n}", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(processes)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    requests = len(requests_with(server, tag))
    assert requests == processes * turns
    assert stored_counts(postgres_database) == {"ledger": requests, "message": requests}


def test_without_psycopg_a_database_url_is_a_store_problem_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "agentrt_jupyter.stores.pgstore", raising=False)
    echo = FakeBackend(lambda request: "fine")
    config = RuntimeConfig(store_url="postgresql://u:pw@127.0.0.1:1/db", store_path=None)
    with AgentRuntime(config, backend_factory=lambda endpoint: echo) as runtime:
        assert "agentrt-jupyter[postgres]" in str(runtime.store_problem)
        assert runtime.create_agent(name="n").chat("hi").text(timeout=10) == "fine"
