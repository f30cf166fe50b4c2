"""Real servers for integration and end-to-end tests, started once per session by the suite.

A server that cannot start makes its tests *error*, never skip: CI must not pass green without
having talked to a real broker.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from streamrec_dev.servers import KafkaServer, PostgresServer, RedisServer, free_port
from streamrec_shared.kafka import ensure_topics
from streamrec_shared.settings import KafkaSettings, RedisSettings, TopicSettings


@pytest.fixture(scope="session")
def servers_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def kafka_server(servers_home: Path) -> Iterator[KafkaServer]:
    server = KafkaServer(
        name="kafka", home=servers_home / "kafka", port=free_port(), controller_port=free_port()
    )
    server.start(timeout=90)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(servers_home: Path) -> Iterator[RedisServer]:
    server = RedisServer(name="redis", home=servers_home / "redis", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka_settings(kafka_server: KafkaServer) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_server.bootstrap, client_id="tests")


@pytest.fixture
def redis_settings(redis_server: RedisServer, unique: str) -> RedisSettings:
    # Each test its own key prefix: tests share the server, never each other's keys.
    return RedisSettings(url=redis_server.url, key_prefix=f"test:{unique}:")  # type: ignore[arg-type]


@pytest.fixture
async def topic_settings(
    kafka_settings: KafkaSettings, unique: str
) -> AsyncIterator[TopicSettings]:
    """Each test its own topics, created through the project's own admin code."""
    topics = TopicSettings(events_partitions=3, default_partitions=1).isolated(unique)
    await ensure_topics(kafka_settings, topics)
    return topics


# ------------------------------------------------------------------ PostgreSQL and the registry


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under servers_home: pytest's tmp root is 0700 for its user, and as root PostgreSQL
    # runs as the `postgres` user, which must be able to enter its home. A folder of its own
    # (0755, removed afterwards) keeps pytest's folder private.
    home = Path(tempfile.mkdtemp(prefix="streamrec-pg-"))
    try:
        home.chmod(0o755)
        server = PostgresServer(name="postgres", home=home, port=free_port(), fast_unsafe=True)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> str:
    """An empty database for the model registry: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"reg_{unique}")
