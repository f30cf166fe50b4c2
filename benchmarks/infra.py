"""What a benchmark runs on: its own Kafka and Redis, and the services' environment."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from streamrec_dev.servers import REPO_ROOT, KafkaServer, ManagedProcess, RedisServer, free_port
from streamrec_shared.kafka import ensure_topics
from streamrec_shared.settings import KafkaSettings, TopicSettings


@dataclass(frozen=True)
class Infrastructure:
    kafka_server: KafkaServer
    redis_server: RedisServer
    kafka: KafkaSettings
    topics: TopicSettings
    # What every service process gets, as a ConfigMap would set it.
    env: dict[str, str]


def start_infrastructure(home: Path, servers: list[ManagedProcess]) -> Infrastructure:
    """Kafka (KRaft) and Redis under ``home`` on free ports, with the platform's topics.

    Both are appended to ``servers`` before they start, so the caller's ``finally`` stops
    whatever did start.
    """
    kafka_server = KafkaServer(
        name="kafka", home=home / "kafka", port=free_port(), controller_port=free_port()
    )
    redis_server = RedisServer(name="redis", home=home / "redis", port=free_port())
    servers += [kafka_server, redis_server]
    kafka_server.start(timeout=90)
    redis_server.start()
    kafka = KafkaSettings(bootstrap_servers=kafka_server.bootstrap)
    topics = TopicSettings()
    asyncio.run(ensure_topics(kafka, topics))
    env = {
        "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": kafka_server.bootstrap,
        "STREAMREC_REDIS_URL": redis_server.url,
        **topics.environment(),
        "PYTHONPATH": str(REPO_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return Infrastructure(kafka_server, redis_server, kafka, topics, env)
