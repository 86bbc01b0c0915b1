"""The messages workers hold (kombu's ``unacked`` hash), who holds each, and giving back the
messages of a worker that died.

kombu's Redis transport keeps a delivered, unacknowledged message in ``unacked`` (delivery tag
-> [payload, exchange, routing key]) and its delivery time in ``unacked_index``; it puts the
message back on its queue only after the visibility timeout (an hour by default), which must
stay above the longest render. A worker killed with messages in hand (prefetched, or started
with renders still to go) would leave their jobs waiting that long.

So each worker process records what it holds (``keys.HOLDERS``: tag -> ``<holder>|<received
at>``, written as it receives a message, rewritten with its beat) and says it is alive
(``keys.holder``, a key with a short TTL refreshed by a thread of its main process:
``workers.holding``). A message whose holder is silent, for ``HOLDER_TTL_S`` (the key expired)
and then for ``CONFIRM_S`` more as the reconcilers see it, goes back to its queue the way
kombu's own restore does (``GIVE_BACK``: one script, so of several reconcilers one moves it):
the same message, redelivered, whose start fence lets it take over its jobs. A message whose
holder is unknown (received before this, or the entry lost with Redis) is left to kombu.

The confirmation window is watched in Redis, not assumed from the key's absence: after an
outage longer than the TTL every holder's key is gone though its worker lives; it is silent
for the window only if it did not write again once Redis was back.
"""

from __future__ import annotations

import base64
import json
from bisect import bisect
from dataclasses import dataclass
from typing import Any

import redis

from farm import fleet, keys

UNACKED = "unacked"  # kombu's default names (the farm does not change them)
UNACKED_INDEX = "unacked_index"
HOLDER_BEAT_S = 2.0  # a holder writes its key this often
HOLDER_TTL_S = 10  # ... with this TTL: five beats missed and it is gone
CONFIRM_S = 10.0  # then silent this long as the reconcilers see it: dead
# A holder entry written this long after the delivery kombu recorded belongs to an earlier
# delivery of the same message (a delivery tag is the message's, kept across redeliveries).
SAME_DELIVERY_S = 5.0
_MAX_PRIORITY = 9  # kombu's virtual transport clamps priorities to 0..9

# KEYS: unacked, unacked index, holders, the holder's key, the message's running key, queue list.
# ARGV: tag, the entry as read, the holder entry as read, the payload to queue, same-delivery s.
# The message goes back only if nothing changed since it was read: still unacked as it was,
# still this holder's, the holder still silent, no execution of it alive (a pool process may
# outlive its main process), and the holder entry is of this delivery.
GIVE_BACK = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[3] then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
local at = tonumber(string.match(ARGV[3], '|([^|]*)$'))
local delivered = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
if at and delivered and delivered > at + tonumber(ARGV[5]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[6], ARGV[4])
return 1
"""

# KEYS: holders, unacked. ARGV: tags. Drops the entries of messages no longer held (acked, or
# back in a queue); one script, so an entry written by a new delivery in between stays.
_FORGET = """
local n = 0
for _, tag in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[2], tag) == 0 then n = n + redis.call('HDEL', KEYS[1], tag) end
end
return n
"""


@dataclass(frozen=True)
class Held:
    """One message in kombu's ``unacked`` hash and who holds it (None: unknown)."""

    tag: str
    entry: str  # the hash value as stored: JSON [payload, exchange, routing key]
    payload: dict[str, Any]
    routing_key: str
    holder: str | None  # "<holder>|<received at>"

    @property
    def holder_id(self) -> str | None:
        return self.holder.rsplit("|", 1)[0] if self.holder else None

    @property
    def message_id(self) -> str | None:
        return (self.payload.get("headers") or {}).get("id")


def queue_list(queue: str, payload: dict[str, Any]) -> str:
    """The Redis list kombu would put this message back on (its queue, at its priority step)."""
    try:
        priority = max(min(int(payload["properties"]["priority"]), _MAX_PRIORITY), 0)
    except (KeyError, TypeError, ValueError):
        priority = 0
    steps = fleet.PRIORITY_STEPS
    return fleet.priority_lists(queue)[bisect(steps, priority) - 1]


class HeldMessages:
    """Reads who holds what; gives a dead holder's messages back to their queues."""

    def __init__(self, client: redis.Redis, queues: list[str]):
        self.redis = client
        self.queues = set(queues)
        self._give_back = client.register_script(GIVE_BACK)
        self._forget = client.register_script(_FORGET)

    def scan(self) -> list[Held]:
        """Every held message with its holder entry (one round trip, read together)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(UNACKED)
        pipe.hgetall(keys.HOLDERS)
        unacked, holders = pipe.execute()
        out = []
        for raw_tag, raw in unacked.items():
            tag, entry = raw_tag.decode(), raw.decode()
            try:
                payload, _exchange, routing_key = json.loads(entry)
            except (ValueError, TypeError):
                continue
            holder = holders.get(raw_tag)
            out.append(Held(tag, entry, payload, routing_key, holder and holder.decode()))
        gone = [t for t in holders if t not in unacked]
        if gone:
            self._forget(keys=[keys.HOLDERS, UNACKED], args=gone)
        return out

    def dead(self, held: list[Held], confirm_s: float = CONFIRM_S) -> set[str]:
        """The holders of these messages silent past their TTL and for ``confirm_s`` since a
        reconciler first found them so; marks the newly silent, unmarks those that spoke."""
        ids = sorted({h.holder_id for h in held if h.holder_id})
        if not ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for holder_id in ids:
            pipe.exists(keys.holder(holder_id))
        pipe.hgetall(keys.HOLDERS_SILENT)
        pipe.time()
        *alive, silent, (seconds, micros) = pipe.execute()
        now = seconds + micros / 1e6
        since = {k.decode(): float(v) for k, v in silent.items()}
        pipe = self.redis.pipeline(transaction=False)
        dead = set()
        for holder_id, up in zip(ids, alive, strict=True):
            if up:
                if holder_id in since:
                    pipe.hdel(keys.HOLDERS_SILENT, holder_id)
            elif holder_id not in since:
                pipe.hsetnx(keys.HOLDERS_SILENT, holder_id, now)
                if confirm_s <= 0:
                    dead.add(holder_id)
            elif now - since[holder_id] >= confirm_s:
                dead.add(holder_id)
        # Holders no message names any more (their messages were acked or given back).
        for holder_id in set(since) - set(ids):
            pipe.hdel(keys.HOLDERS_SILENT, holder_id)
        pipe.execute()
        return dead

    def give_back(self, message: Held) -> bool:
        """Put a dead holder's message back on its queue (marked redelivered, as kombu does).
        False if anything changed since it was read, or its queue is not one of the farm's."""
        holder, holder_id = message.holder, message.holder_id
        if message.routing_key not in self.queues or not holder or holder_id is None:
            return False
        payload = json.loads(json.dumps(message.payload))
        payload.setdefault("headers", {})["redelivered"] = True
        delivery = payload.setdefault("properties", {}).setdefault("delivery_info", {})
        delivery["redelivered"] = True
        args: list[str | float] = [
            message.tag,
            message.entry,
            holder,
            json.dumps(payload),
            SAME_DELIVERY_S,
        ]
        target = queue_list(message.routing_key, payload)
        running = keys.running_message(message.message_id or "")
        names = [UNACKED, UNACKED_INDEX, keys.HOLDERS, keys.holder(holder_id), running]
        return bool(self._give_back(keys=[*names, target], args=args))


def message_jobs(payload: dict[str, Any]) -> tuple[str | None, str | None, list[str]]:
    """A kombu message's id, task name and the job ids it carries (none for other tasks)."""
    try:
        _args, kwargs, _ = json.loads(base64.b64decode(payload["body"]))
    except (KeyError, ValueError, TypeError):
        return None, None, []
    jobs = kwargs.get("jobs") or ([kwargs] if kwargs.get("job_id") else [])
    headers = payload.get("headers", {})
    return headers.get("id"), headers.get("task"), [j["job_id"] for j in jobs if "job_id" in j]
