"""Running executions say they are alive, so the reconciler never sends a running job again.

A job running in a worker is normally covered by its message in kombu's ``unacked`` hash. That
hash can lose an entry (Redis restarted from an AOF a second behind) while the worker goes on
rendering; without another sign of life the reconciler would count the job stranded and send
it a second time. So each execution keeps a key with a short TTL (``keys.running``) refreshed by
one daemon thread per process: it disappears within ``TTL_S`` of the process dying, and comes
back within ``REFRESH_S`` after Redis lost it. A second key per message
(``keys.running_message``) tells the reconciler not to give a message back to its queue while
an execution of it is alive, even if the worker process that received it is gone.
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
    for key, client in items:
        try:
            client.set(key, "1", ex=TTL_S)
        except redis.RedisError as e:  # Redis away: the next round writes it again
            log.debug("liveness %s not written: %s", key, e)


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
def running(client: redis.Redis, execution: str, message_id: str | None = None):
    """Keep ``keys.running(execution)`` (and ``keys.running_message(message_id)``) alive while
    the block runs; delete them after."""
    names = [keys.running(execution)] + ([keys.running_message(message_id)] if message_id else [])
    with _lock:
        for name in names:
            _active[name] = client
        _ensure_thread()
    try:
        for name in names:
            client.set(name, "1", ex=TTL_S)
    except redis.RedisError:
        pass  # the stage's own Redis calls will say so; the thread writes it once Redis is back
    try:
        yield
    finally:
        with _lock:
            for name in names:
                _active.pop(name, None)
        with contextlib.suppress(redis.RedisError):
            client.delete(*names)
