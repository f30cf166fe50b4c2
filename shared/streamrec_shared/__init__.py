"""streamrec's common library: settings, schemas, Kafka and Redis clients, logging, metrics.

Services import from here; they never build a Kafka or Redis client of their own.
"""

from streamrec_shared.http import ApiError, add_probes, install_error_handlers, json_response
from streamrec_shared.kafka import (
    KafkaUnavailableError,
    ResilientProducer,
    build_consumer,
    build_producer,
    ensure_topics,
    platform_topics,
)
from streamrec_shared.observability import HttpMetrics, MetricsMiddleware, configure_logging
from streamrec_shared.redis import build_redis
from streamrec_shared.settings import KafkaSettings, LogSettings, RedisSettings, TopicSettings

__all__ = [
    "ApiError",
    "HttpMetrics",
    "KafkaSettings",
    "KafkaUnavailableError",
    "LogSettings",
    "MetricsMiddleware",
    "RedisSettings",
    "ResilientProducer",
    "TopicSettings",
    "add_probes",
    "build_consumer",
    "build_producer",
    "build_redis",
    "configure_logging",
    "ensure_topics",
    "install_error_handlers",
    "json_response",
    "platform_topics",
]
