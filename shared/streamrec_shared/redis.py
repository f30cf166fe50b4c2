"""The one place that builds Redis clients."""

from __future__ import annotations

from redis.asyncio import Redis

from streamrec_shared.settings import RedisSettings


def build_redis(settings: RedisSettings) -> Redis:
    return Redis.from_url(
        settings.url.get_secret_value(),
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        max_connections=settings.max_connections,
        # Fail fast: every caller has a fallback, and a retry loop here would hide an outage.
        retry_on_timeout=False,
        health_check_interval=0,
    )
