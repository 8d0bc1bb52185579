"""Schema migrations: numbered SQL files applied in order, once, under an advisory lock.

``sql/NNN_name.sql`` files (shipped inside the package) are applied in
ascending order, each in its own transaction, and recorded in
``schema_migrations``. A session-level advisory lock serializes every process
that migrates the same database, so two servers starting at once cannot race;
the second finds the work done. Blocking (psycopg's sync API): call it from a
worker thread or before the event loop starts.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import attrs
import psycopg

log = logging.getLogger("nexus_actors.migrate")

LOCK_KEY = 0x6E65_7875_735F_6D67
"Advisory lock key (bigint) held while migrating: 'nexus_mg'."

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("nexus_actors").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def migrate(conninfo: str) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied now."""
    applied_now: list[int] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in migrations():
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (migration.version, migration.name))
                log.info("applied migration %03d_%s", migration.version, migration.name)
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now
