"""Running executions say they are alive, so the reconciler never sends a running job again.

A job running in a worker is normally covered by its message in kombu's ``unacked`` hash. That
hash can lose an entry (Redis restarted from an AOF a second behind) while the worker goes on
rendering; without another sign of life the reconciler would count the job stranded and send
it a second time. So each execution keeps a key with a short TTL (``keys.running``) refreshed by
one daemon thread per process: it disappears within ``TTL_S`` of the process dying, and comes
back within ``REFRESH_S`` after Redis lost it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import redis

from farm import keys

log = logging.getLogger("farm.worker")

REFRESH_S = 2.0
TTL_S = 10

_lock = threading.Lock()
_active: dict[str, redis.Redis] = {}
_thread: tuple[int, threading.Thread] | None = None


def _refresh_all() -> None:
    with _lock:
        items = list(_active.items())
    for execution, client in items:
        try:
            client.set(keys.running(execution), "1", ex=TTL_S)
        except redis.RedisError as e:  # Redis away: the next round writes it again
            log.debug("liveness of %s not written: %s", execution, e)


def _loop() -> None:
    while True:
        time.sleep(REFRESH_S)
        _refresh_all()


def _ensure_thread() -> None:
    global _thread
    # After a fork the parent's thread does not exist in the child: start one per process.
    if _thread is None or _thread[0] != os.getpid() or not _thread[1].is_alive():
        thread = threading.Thread(target=_loop, name="farm-liveness", daemon=True)
        thread.start()
        _thread = (os.getpid(), thread)


@contextlib.contextmanager
def running(client: redis.Redis, execution: str):
    """Keep ``keys.running(execution)`` alive while the block runs; delete it after."""
    with _lock:
        _active[execution] = client
        _ensure_thread()
    try:
        client.set(keys.running(execution), "1", ex=TTL_S)
    except redis.RedisError:
        pass  # the stage's own Redis calls will say so; the thread writes it once Redis is back
    try:
        yield
    finally:
        with _lock:
            _active.pop(execution, None)
        with contextlib.suppress(redis.RedisError):
            client.delete(keys.running(execution))
