"""Batches across messages: a decoder takes compatible jobs from other queued messages.

Batches form at submission only within a campaign; lone jobs (``POST /v1/jobs``), small
campaigns and several teams' campaigns would each render alone. So a message that has room is
*offered* when it is sent: its payload is kept in Redis and its id listed under its queue and
batch key. A decoder that starts a message with room *gathers*: it claims offered messages of
the same key, oldest first, until its render is full (waiting up to ``batch_wait_ms`` for more
when the queue has none), and renders their jobs with its own.

Delivery stays at least once, with no job lost or run twice:
- claiming is one script: a message is claimed once, by one claimer, and a message whose own
  delivery has started can no longer be claimed;
- the claimer records what it took under its own message id; if it dies, its message is
  delivered again (late acks) and the record gives the taken jobs back to it;
- a claimed message, when its own delivery comes, is acknowledged without running: its jobs
  belong to the claimer's message;
- the job state machine still guards every move: a job done is never rendered again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from farm import keys
from farm.domain.batching import BatchKey, batch_key
from farm.domain.jobs import JobSpec
from farm.errors import ServiceUnavailable

# KEYS: open list, own claimed marker, own claims list. ARGV: own id, room, ttl, key prefix.
# Returns {"taken"} or {"ok", payload, ...} (every payload this message has claimed so far).
_GATHER = """
local own, room, ttl, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local by = redis.call('GET', KEYS[2])
if by and by ~= own then
  return {'taken'}
end
redis.call('SET', KEYS[2], own, 'EX', ttl)
redis.call('LREM', KEYS[1], 0, own)
redis.call('DEL', prefix .. 'offer:' .. own)
for _, raw in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  room = room - #cjson.decode(raw)['jobs']
end
while room > 0 do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local payload = redis.call('GET', prefix .. 'offer:' .. id)
  local marker = prefix .. 'claimed:' .. id
  if payload and redis.call('EXISTS', marker) == 0 then
    local n = #cjson.decode(payload)['jobs']
    if n > room then
      redis.call('LPUSH', KEYS[1], id)
      break
    end
    redis.call('SET', marker, own, 'EX', ttl)
    redis.call('RPUSH', KEYS[3], payload)
    redis.call('EXPIRE', KEYS[3], ttl)
    redis.call('DEL', prefix .. 'offer:' .. id)
    room = room - n
  end
end
local out = {'ok'}
for _, raw in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  table.insert(out, raw)
end
return out
"""


# What makes a message claimable: (queue, batch key, message id, payload).
Offer = tuple[str, BatchKey, str, dict[str, Any]]


def open_list(queue: str, batch_key: BatchKey) -> str:
    """Redis list of the offered messages of one queue and batch key, oldest first."""
    return keys.open_messages(queue, hashlib.sha256(repr(batch_key).encode()).hexdigest()[:20])


def offer_for(
    queue: str, spec: JobSpec, message_id: str, payload: dict[str, Any], batch_max: int
) -> Offer | None:
    """The offer for a decoder message that has room in its render, or None (full, or its
    jobs never batch)."""
    key = batch_key(spec)
    if key is None or len(payload["jobs"]) >= batch_max:
        return None
    return (queue, key, message_id, payload)


class Gathering:
    """Offers and claims; one per process, sharing its Redis client."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._gather = client.register_script(_GATHER)

    def offer(self, offers: list[Offer]) -> None:
        """Make messages with room claimable, one round trip: (queue, batch key, message id,
        payload) each. Called before they are sent, so none is claimed after its own
        delivery started."""
        if not offers:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue, batch_key, message_id, payload in offers:
                data = json.dumps(payload, ensure_ascii=False)
                pipe.set(keys.offer(message_id), data, ex=self.ttl_s)
                pipe.rpush(open_list(queue, batch_key), message_id)
                pipe.expire(open_list(queue, batch_key), self.ttl_s)
            pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot offer messages: {e}") from e

    def gather(
        self, queue: str, batch_key: BatchKey, message_id: str, room: int
    ) -> list[dict[str, Any]] | None:
        """Claim offered messages for ``message_id`` until ``room`` jobs more are taken.

        Returns every payload this message has claimed (again, after a redelivery), or None
        when another message claimed this one: its jobs are that message's to render.
        """
        try:
            out = self._gather(
                keys=[
                    open_list(queue, batch_key),
                    keys.claimed(message_id),
                    keys.claims(message_id),
                ],
                args=[message_id, room, self.ttl_s, keys.PREFIX],
            )
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot gather messages: {e}") from e
        if out[0] == b"taken":
            return None
        return [json.loads(raw) for raw in out[1:]]

    def release(self, message_id: str) -> None:
        """After a message's jobs all ended: its claims record is no longer needed (the
        markers on the taken messages stay until they expire, for their late deliveries)."""
        try:
            self.client.delete(keys.claims(message_id))
        except redis.RedisError:
            pass  # it expires
