"""The one Lua script every job state move goes through, and the fences a move can carry.

The script checks the state a job leaves (so a worker can never overwrite a cancel, nor a late
duplicate a finished job) and keeps the campaign's per-state counts in the same atomic step;
``RecordStore`` (``farm.stores.records``) runs it.
"""

from __future__ import annotations

from collections.abc import Iterable

from farm.domain.jobs import JobState

ACTIVE = (JobState.QUEUED, JobState.PRIOR, JobState.DECODING)
TERMINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

# KEYS: job, counts, campaign, in-flight set. ARGV: new state, now, allowed states (comma list),
# fence (see ``fence``), field/value...
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, '', 0} end
-- A job of a campaign Redis no longer knows (lost, not rebuilt yet) stays put: moving it would
-- recreate half a campaign, which would then hide the loss from the feeder.
if redis.call('HEXISTS', KEYS[3], 'total') == 0 then return {0, cur, 0} end
local ok = false
for s in string.gmatch(ARGV[3], '[^,]+') do if s == cur then ok = true end end
if not ok then return {0, cur, 0} end
-- Fencing: a job running in a stage belongs to the message that started it ('owner') and to
-- that message's latest execution ('exec'). Another message (a stale or duplicate copy) cannot
-- take it over; a redelivery of the same message can (its earlier execution died, or is
-- presumed dead), and from then on only the newest execution may finish or fail the job.
local kind, a, b = string.match(ARGV[4], '^(%a+)|([^|]*)|?(.*)$')
if kind == 'start' and cur == ARGV[1] then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner and owner ~= a then return {0, cur, 0} end
elseif kind == 'own' then
  local ex = redis.call('HGET', KEYS[1], 'exec')
  if ex and ex ~= a then return {0, cur, 0} end
elseif kind == 'at' then
  -- Compare-and-set on the last move: of several reconcilers that saw the job stranded at
  -- the same moment, the first moves it and the others find it moved.
  local at = redis.call('HGET', KEYS[1], 'updated_at')
  if at and tonumber(at) ~= tonumber(a) then return {0, cur, 0} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
if kind == 'start' then
  redis.call('HSET', KEYS[1], 'owner', a, 'exec', b)
elseif ARGV[1] ~= 'prior' and ARGV[1] ~= 'decoding' then
  redis.call('HDEL', KEYS[1], 'owner', 'exec')
end
-- The reconciler looks only at jobs in flight: the set follows every move.
if ARGV[1] == 'done' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('SREM', KEYS[4], KEYS[1])
else
  redis.call('SADD', KEYS[4], KEYS[1])
end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local complete = 0
if cur ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[2], cur, -1)
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  if ARGV[1] == 'prior' or ARGV[1] == 'decoding' then
    redis.call('HSETNX', KEYS[3], 'started_at', ARGV[2])
  end
  if ARGV[1] == 'done' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
    local c = redis.call('HMGET', KEYS[2], 'done', 'failed', 'cancelled')
    local n = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0)
    if n == tonumber(redis.call('HGET', KEYS[3], 'total') or '-1') then
      redis.call('HSET', KEYS[3], 'finished_at', ARGV[2])
      complete = 1
    end
  elseif cur == 'done' or cur == 'failed' or cur == 'cancelled' then
    redis.call('HDEL', KEYS[3], 'finished_at')
  end
end
return {1, cur, complete}
"""


# KEYS: job, in-flight set. ARGV: ttl, field/value... Creates the record unless it exists.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"""


# KEYS: job. ARGV: ignored, field/value... Sets fields of an existing record only: a worker
# finishing a job whose record Redis lost must not leave a half record behind.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def _states(states: Iterable[JobState]) -> str:
    return ",".join(s.value for s in states)


def start_fence(message_id: str, execution: str) -> str:
    """Fence of a move into a running stage: the job becomes this message's and execution's;
    refused when another message holds the job in that stage."""
    return f"start|{message_id}|{execution}"


def unmoved_fence(updated_at: float) -> str:
    """Fence of a move made only if the job's last move is still the one seen at ``updated_at``."""
    return f"at|{updated_at!r}"


def own_fence(execution: str) -> str:
    """Fence of a move out of a running stage: only the job's latest execution may make it."""
    return f"own|{execution}"
