"""The PostgreSQL store's schema and connections: pg_setup.sql, its migrations, the price
table it copies, and the one way connections are made (timeouts set, autocommit)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
"""`agentrt.meta.schema_version` of the databases this module writes."""
LISTING = """
WITH cleared AS (
  SELECT conversation, max(seq) AS seq FROM agentrt.records
  WHERE kind = 'cleared' AND owner = %(owner)s GROUP BY conversation),
shown AS (
  SELECT r.conversation, count(*) AS messages,
         count(DISTINCT CASE WHEN r.role != 'summary' THEN r.turn END) AS turns
  FROM agentrt.records r LEFT JOIN cleared k ON k.conversation = r.conversation
  WHERE r.owner = %(owner)s AND r.kind = 'message' AND r.seq > coalesce(k.seq, 0)
  GROUP BY r.conversation),
totals AS (
  SELECT conversation, sum(octet_length(data)) AS size, max(written) AS last
  FROM agentrt.records WHERE owner = %(owner)s GROUP BY conversation)
SELECT c.id, c.namespace, c.name, c.created,
       coalesce(s.messages, 0) + (d.conversation IS NOT NULL)::int, coalesce(s.turns, 0),
       coalesce(t.size, 0) + coalesce(octet_length(d.data), 0),
       greatest(coalesce(t.last, c.created), coalesce(d.written, 0)),
       l.token, l.holder, l.pid, l.host, l.heartbeat
FROM agentrt.conversations c
LEFT JOIN shown s ON s.conversation = c.id
LEFT JOIN totals t ON t.conversation = c.id
LEFT JOIN agentrt.drafts d ON d.conversation = c.id
LEFT JOIN agentrt.leases l ON l.conversation = c.id
WHERE c.owner = %(owner)s AND (%(namespace)s::text IS NULL OR c.namespace = %(namespace)s)
ORDER BY c.seq
"""
"""One owner's conversations with their counts and lease, as the SQLite store lists them."""


def setup_sql() -> str:
    """The SQL that makes schema 1: tables, roles, grants, row-level security, admin view."""
    return resources.files(__package__).joinpath("pg_setup.sql").read_text()


def connect(url: str, connect_timeout: float, statement_timeout: float) -> psycopg.Connection:
    """An autocommit connection; a server that does not answer is an error within
    `connect_timeout`, a statement that takes longer than `statement_timeout` is cancelled."""
    import psycopg

    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=max(1, round(connect_timeout)),
        options=f"-c statement_timeout={int(statement_timeout * 1000)}",
    )


def fill_prices(conn: psycopg.Connection) -> None:
    """Copy the package's price table into `agentrt.prices` (the usage view's estimate)."""
    from ..batch.prices import PRICES

    for model, price in PRICES.items():
        conn.execute(
            "INSERT INTO agentrt.prices (model, input, output) VALUES (%s, %s, %s)"
            " ON CONFLICT (model) DO UPDATE SET input = excluded.input, output = excluded.output",
            (model, price.input, price.output),
        )


MIGRATIONS = {0: setup_sql}
"""Step `n` takes a database from schema n to n + 1 (its SQL), in one transaction."""
