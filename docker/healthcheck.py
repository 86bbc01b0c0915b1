#!/usr/bin/env python3
"""Container health checks of the farm's images (Docker HEALTHCHECK and Kubernetes exec probes).

    farm-healthcheck http URL    the API (/healthz, /readyz) or Flower (/healthcheck): 2xx = ok
    farm-healthcheck worker      a worker in this container writes a fresh heartbeat

Slim images have no curl, hence the stdlib HTTP check. A worker is judged by the heartbeat the
farm itself trusts (``farm.fleet``: the hash ``farm:worker:<node>``, rewritten every 5 s by a
thread of the worker's main process, gone 20 s after it stops), not by ``celery inspect ping``:
a decoder runs the solo pool, whose event loop does not answer a ping while it renders (up to the
30 min task limit), so a ping would mark a busy GPU worker dead. The node is any of
``farm:workers`` whose name ends in ``@<this hostname>`` (``farm worker`` names its node
``<stage>-<random>@<hostname>``; Celery's ``%h`` is the same hostname). When Redis itself cannot
be reached the check passes and says so: the worker reconnects by itself, and restarting every
worker during a broker outage would only add model reloads to it.

Exit status 0 = healthy, 1 = not (the reason on stderr).
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request


def check_http(url: str, timeout: float = 4.0) -> tuple[bool, str]:
    """GET ``url``: healthy on a 2xx answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300, f"{url}: {resp.status}"
    except urllib.error.HTTPError as e:
        return False, f"{url}: {e.code}"
    except (OSError, ValueError) as e:
        return False, f"{url}: {type(e).__name__}: {e}"


def check_worker(client, hostname: str, now: float | None = None) -> tuple[bool, str]:
    """A worker of this host has a heartbeat younger than the farm's heartbeat TTL."""
    import redis

    from farm import fleet, keys

    now = time.time() if now is None else now
    try:
        nodes = sorted(n.decode() for n in client.smembers(keys.WORKERS))
        mine = [n for n in nodes if n.endswith("@" + hostname)]
        beats = [client.hget(keys.worker(n), "heartbeat_at") for n in mine]
    except redis.RedisError as e:
        return True, f"Redis unreachable ({type(e).__name__}): not judging the worker"
    for node, beat in zip(mine, beats, strict=True):
        if beat is not None and now - float(beat) < fleet.HEARTBEAT_TTL_S:
            return True, f"{node}: heartbeat {now - float(beat):.1f}s ago"
    if not mine:
        return False, f"no worker of host {hostname} has a heartbeat (loading, or not running)"
    return False, f"{', '.join(mine)}: heartbeat older than {fleet.HEARTBEAT_TTL_S}s"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "http":
        ok, why = check_http(args[1])
    elif args == ["worker"]:
        from farm.settings import Settings
        from farm.stores.connect import redis_client

        client = redis_client(Settings.load(), socket_connect_timeout=3, socket_timeout=3)
        ok, why = check_worker(client, socket.gethostname())
    else:
        print("usage: farm-healthcheck http URL | farm-healthcheck worker", file=sys.stderr)
        return 2
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
