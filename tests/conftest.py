from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio.testing

from nexus_actors.testing.postgres import Databases, admin_url


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Databases]:
    """A real PostgreSQL server (NEXUS_TEST_DATABASE_URL, else embedded) for this run."""
    with admin_url() as admin:
        databases = Databases(admin)
        try:
            yield databases
        finally:
            databases.close()


@pytest.fixture
def database_url(postgres_databases: Databases) -> Iterator[str]:
    """A fresh, migrated, empty database, dropped after the test."""
    url = postgres_databases.fresh()
    try:
        yield url
    finally:
        postgres_databases.drop(url)
