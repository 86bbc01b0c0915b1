"""A worker's main process says which broker messages it holds, and that it is alive.

kombu keeps a message a worker received and has not acknowledged in its ``unacked`` hash, and
gives it out again only after the visibility timeout (an hour). When this process dies holding
messages (prefetched, or started with renders to go), the reconciler gives them back to their
queues once it sees this process silent (``farm.stores.unacked``). For that this process
records each message as it receives it (delivery tag -> ``<holder>|<received at>``) and keeps a
key with a short TTL alive from a thread of its own: the Celery main process, whatever the pool
(prefork children, solo, threads), since it is the one that receives and acknowledges.

The holder id is the node name and a boot id: a worker restarted under the same name (by a
supervisor) is another holder, so the messages its predecessor held are seen as orphaned.
Only the main process writes: a pool process that outlives it keeps its own execution's key
alive (``workers.liveness``), which stops the give-back of that message.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from farm import keys
from farm.stores.unacked import HOLDER_BEAT_S, HOLDER_TTL_S

log = logging.getLogger("farm.worker")


# KEYS: holders. ARGV: "<holder>|", then tag, entry pairs. Writes an entry again only where it
# is missing or still ours: a message given back while this process was silent (a stall, a cut
# link) and delivered to another worker since is that worker's now.
_REWRITE = """
for i = 2, #ARGV, 2 do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if not v or string.sub(v, 1, #ARGV[1]) == ARGV[1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


class Holding:
    """This process's held messages and its sign of life (one per worker main process)."""

    def __init__(self, client: redis.Redis, node: str):
        self.redis = client
        self.id = f"{node}/{uuid.uuid4().hex[:12]}"
        self._held: dict[str, str] = {}  # delivery tag -> holder entry
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rewrite = client.register_script(_REWRITE)

    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="farm-holding", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def received(self, tag: str | None) -> None:
        """Record a message just received (kombu already put it in ``unacked``)."""
        if not tag:
            return
        entry = f"{self.id}|{time.time():.3f}"
        with self._lock:
            self._held[tag] = entry
        try:
            self.redis.hset(keys.HOLDERS, tag, entry)
        except redis.RedisError as e:  # the next beat writes it again
            log.debug("holding of %s not written: %s", tag, e)

    def _beat(self) -> None:
        from celery.worker import state

        try:  # received, running, or waiting for its countdown (a retry)
            requests = [*state.reserved_requests, *state.scheduled_requests]
            holding = {r.message.delivery_tag for r in requests}
        except RuntimeError:  # the consumer changed a set meanwhile: prune at the next beat
            holding = None
        recent = time.time() - 4 * HOLDER_BEAT_S  # received, maybe not listed as reserved yet
        with self._lock:
            if holding is not None:
                self._held = {
                    t: e
                    for t, e in self._held.items()
                    if t in holding or float(e.rsplit("|", 1)[1]) > recent
                }
            held = dict(self._held)
        try:
            self.redis.set(keys.holder(self.id), "1", ex=HOLDER_TTL_S)
            if held:  # written again: Redis may have lost an entry (restarted a second behind)
                args = [self.id + "|", *(x for pair in held.items() for x in pair)]
                self._rewrite(keys=[keys.HOLDERS], args=args)
        except redis.RedisError as e:  # Redis away: the next beat writes it again
            log.debug("holder beat failed: %s", e)

    def _loop(self) -> None:
        while not self._stop.wait(HOLDER_BEAT_S):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a beat that dies would give our messages away
                log.warning("holder beat failed", exc_info=True)


_current: Holding | None = None


def start(client: redis.Redis, node: str) -> Holding:
    """Start this process's holding (once; the worker main process calls it when ready)."""
    global _current
    if _current is None:
        _current = Holding(client, node)
        _current.start()
        log.info("holding messages as %s", _current.id)
    return _current


def received(request) -> None:
    """``task_received`` handler: record the message this process now holds."""
    if _current is not None:
        message = getattr(request, "message", None)
        _current.received(getattr(message, "delivery_tag", None))
