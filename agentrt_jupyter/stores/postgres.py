"""PostgreSQL for a team: set the database up, give hub users their roles, read usage.

`setup(url)` (or `python -m agentrt_jupyter.stores.postgres setup URL`) applies
pg_setup.sql as a role allowed to make schemas and roles: the tables, the `agentrt_users`
and `agentrt_admin` group roles, their grants, row-level security (`owner = current_user`)
and the `agentrt.agentrt_usage_daily` view. A hub's spawner calls `create_user_role` for
each user and hands the kernel `AGENTRT_STORE_URL` with that role's name and password.
An admin reads the usage view, or `usage_report(url)` as a DataFrame. The store itself
is `PgStore` (re-exported here).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..config import redacted_url
from ..errors import StoreError
from .pgschema import SCHEMA_VERSION, connect, fill_prices, setup_sql
from .pgstore import PgStore

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgStore", "create_user_role", "setup", "usage_report"]


def setup(url: str) -> None:
    """Create or update the schema, roles, grants and policies (as a role allowed to) and
    fill the price table; idempotent. `StoreError` if it cannot."""
    with _admin_connection(url, "set up the store") as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('agentrt setup'))")
        conn.execute(setup_sql().encode())
        fill_prices(conn)


def create_user_role(url: str, name: str, password: str, *, admin: bool = False) -> None:
    """A login role `name` (a hub user) in `agentrt_users` (or `agentrt_admin`), with
    `password`; an existing one gets the password and membership. For a hub's spawner."""
    from psycopg import sql

    group = "agentrt_admin" if admin else "agentrt_users"
    with _admin_connection(url, f"create the role {name!r}") as conn, conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))


@contextlib.contextmanager
def _admin_connection(url: str, doing: str) -> Iterator[psycopg.Connection]:
    import psycopg

    try:
        with connect(url, 10.0, 60.0) as conn:
            yield conn
    except psycopg.Error as exc:
        raise StoreError(f"cannot {doing}: {exc}".strip(), path=redacted_url(url)) from exc


def usage_report(store_url: str) -> Any:
    """`agentrt_usage_daily` as a pandas DataFrame (user, day, model, provider, calls,
    tokens_in, tokens_out, usd): every user's for a role in `agentrt_admin`."""
    import pandas as pd

    with _admin_connection(store_url, "read the usage") as conn:
        cursor = conn.execute(
            'SELECT "user", day, model, provider, calls, tokens_in, tokens_out, usd'
            ' FROM agentrt.agentrt_usage_daily ORDER BY day, "user", model'
        )
        columns = [c.name for c in cursor.description or ()]
        rows = cursor.fetchall()
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("calls", "tokens_in", "tokens_out"):
        frame[column] = frame[column].astype("int64")
    frame["usd"] = frame["usd"].astype("float64")
    return frame


def main(argv: list[str]) -> int:
    """`python -m agentrt_jupyter.stores.postgres setup URL`: apply pg_setup.sql."""
    if len(argv) != 2 or argv[0] != "setup":
        print("usage: python -m agentrt_jupyter.stores.postgres setup POSTGRESQL_URL")
        return 2
    try:
        setup(argv[1])
    except StoreError as problem:
        print(problem, file=sys.stderr)
        return 1
    print(f"agentrt store schema {SCHEMA_VERSION} set up in {redacted_url(argv[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
