"""A Redis database of a test's own on the session's Valkey."""

from __future__ import annotations

import contextlib

import redis

from farm.settings import Settings


@contextlib.contextmanager
def own_database(settings: Settings, db: int):
    """Settings on Redis database ``db`` of their own (flushed before and after) and a client:
    no session worker consumes what a test sends there."""
    own = settings.model_copy(update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + f"/{db}"})
    client = redis.Redis.from_url(own.redis_url)
    client.flushdb()
    try:
        yield own, client
    finally:
        client.flushdb()
        client.close()
