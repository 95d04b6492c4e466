"""The throwaway cluster the PostgreSQL tests run on, and whose name records are kept under."""

from __future__ import annotations

import pytest

from agentrt_jupyter.identity import current_user

from .postgres import PostgresCluster, create_login_role


def test_a_login_role_connects_with_its_password_and_not_without(postgres_database: str) -> None:
    import psycopg

    url = create_login_role(postgres_database, "fixture_alice", "alice-pw")
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row is not None and row[0] == "fixture_alice"
    assert url.endswith("/" + row[1])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url.replace("alice-pw", "wrong"), connect_timeout=5)


def test_the_cluster_stops_and_starts_again(postgres_cluster: PostgresCluster) -> None:
    import psycopg

    postgres_cluster.stop("immediate")
    assert not postgres_cluster.running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_cluster.url(), connect_timeout=5)
    postgres_cluster.start()
    with psycopg.connect(postgres_cluster.url()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_user_is_the_hub_user_when_a_hub_spawned_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "student-7")
    assert current_user() == "student-7"


def test_the_user_is_the_os_user_without_a_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    assert current_user() == getpass.getuser()
