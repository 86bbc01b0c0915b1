"""The one place a Redis client is made: a plain URL, or Sentinel for high availability.

``FARM_REDIS_URL`` is either a redis-py URL (``redis://:pw@host:6379/0``, ``rediss://``,
``unix://``) or kombu's Sentinel form, one ``sentinel://`` per sentinel, ``;``-separated::

    sentinel://:pw@host1:26379;sentinel://:pw@host2:26379/0

The password (and user, and ``/db``) are the data servers', as kombu reads them; the primary
is the one the sentinels call ``FARM_REDIS_MASTER``. A Sentinel client asks the sentinels for
the primary on every new connection, and a connection to a demoted primary fails (READONLY is
turned into a connection error), so after a failover each command retried reconnects to the new
primary: Celery's broker and result backend (kombu's ``sentinel`` transport) do the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from farm.errors import ConfigError

if TYPE_CHECKING:
    from farm.settings import Settings

SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``sentinel://`` URL names: the sentinels, and how to log in on the primary."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0


def is_sentinel(url: str | None) -> bool:
    return url is not None and url.strip().lower().startswith(SCHEME + "://")


# redis-py types every reply as bytes or str (str with ``decode_responses``); the farm's clients
# never decode, so a reply is bytes. These say so once, and stay right for either kind.
def text(reply: object) -> str:
    """A string reply (bytes from the farm's clients; redis-py's types say bytes or str) as text.

    Raises:
        TypeError: the reply is not a string (a missing key's None, a list).
    """
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, str):
        return reply
    raise TypeError(f"expected a Redis string reply, got {type(reply).__name__}")


def blob(reply: bytes | str) -> bytes:
    """A Redis reply as bytes."""
    return reply if isinstance(reply, bytes) else reply.encode()


def parse_sentinel(url: str) -> SentinelTarget:
    """Split kombu's ``sentinel://...;sentinel://...`` URL into sentinels and credentials.

    Raises:
        ValueError: a part is not a ``sentinel://host[:port]`` URL, or none names a host.
    """
    hosts: list[tuple[str, int]] = []
    username = password = None
    db = 0
    for part in filter(None, (p.strip() for p in url.split(";"))):
        parts = urlsplit(part)
        if parts.scheme.lower() != SCHEME or not parts.hostname:
            raise ValueError(f"not a sentinel://host[:port] URL: {_masked(part)}")
        hosts.append((parts.hostname, parts.port or 26379))
        # Like kombu: credentials and the database may be on any part; the first given wins.
        if username is None and parts.username:
            username = unquote(parts.username)
        if password is None and parts.password:
            password = unquote(parts.password)
        path = parts.path.strip("/")
        if path and not db:
            if not path.isdigit():
                raise ValueError(f"sentinel URL database must be a number: {path!r}")
            db = int(path)
    if not hosts:
        raise ValueError("sentinel URL names no sentinel")
    return SentinelTarget(tuple(hosts), username, password, db)


def redis_client(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A client of the farm's Redis (``settings.redis_url``), through Sentinel when it says so.

    Args:
        settings: the farm's settings (``redis_url``, ``redis_master``,
            ``redis_sentinel_password``).
        **kwargs: redis-py connection options (``health_check_interval``,
            ``socket_connect_timeout`` ...), for the data connections.
    """
    url = settings.redis_url
    if url is None:
        raise ConfigError("FARM_REDIS_URL not set and no local stack is running: run `farm up`")
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    target = parse_sentinel(url)
    # The sentinels get the socket options (as redis-py's default) and their own password.
    sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis = sentinel.master_for(  # redis-py leaves master_for unannotated
        settings.redis_master,
        username=target.username,
        password=target.password,
        db=target.db,
        **kwargs,
    )
    return client


def transport_options(settings: Settings) -> dict[str, Any]:
    """The Sentinel part of kombu's / Celery's transport options (empty for a plain URL)."""
    if not is_sentinel(settings.redis_url):
        return {}
    out: dict[str, Any] = {"master_name": settings.redis_master}
    if settings.redis_sentinel_password is not None:
        # Celery masks every setting whose name holds "pass" when it lists its configuration.
        out["sentinel_kwargs"] = {"password": settings.redis_sentinel_password.get_secret_value()}
    return out


def _masked(part: str) -> str:
    parts = urlsplit(part)
    if parts.password:
        return part.replace(f":{parts.password}@", ":***@")
    return part
