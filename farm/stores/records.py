"""Job and campaign records in Redis.

A job moves between states only through one Lua script, which checks the state it leaves
(so a worker can never overwrite a cancel, nor a late duplicate a finished job), keeps the
campaign's per-state counts and times in the same atomic step, and says when the move finished
the campaign — exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, cast

import redis

from farm import keys
from farm.domain.jobs import JobRecord, JobSpec, JobState
from farm.domain.manifest import JobIds
from farm.errors import NotFound, ServiceUnavailable
from farm.stores.connect import text
from farm.stores.transitions import _ADD, _TRANSITION, _UPDATE, _states

# The scripts and fences live in ``transitions``; callers import the fences and state sets from
# here too (``X as X``: an explicit re-export).
from farm.stores.transitions import ACTIVE as ACTIVE
from farm.stores.transitions import TERMINAL as TERMINAL
from farm.stores.transitions import own_fence as own_fence
from farm.stores.transitions import start_fence as start_fence
from farm.stores.transitions import unmoved_fence as unmoved_fence

BATCH = 1000  # commands per pipelined round trip


class RecordStore:
    """Creates, moves and reads job and campaign records."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._transition = client.register_script(_TRANSITION)
        self._add = client.register_script(_ADD)
        self._update = client.register_script(_UPDATE)

    # -- create -------------------------------------------------------------------------------

    def create_campaign(
        self,
        campaign_id: str,
        tenant: str,
        *,
        total: int,
        families: list[str],
        name: str | None = None,
        priority: str = "normal",
        created_at: float | None = None,
        callback_url: str | None = None,
    ) -> None:
        """Record a campaign: its header, its counts (every job queued) and its place in the
        feeder's list. No job is recorded here: a job's record is made when it is fed."""
        now = created_at or time.time()
        ckey, counts = keys.campaign(campaign_id), keys.campaign_counts(campaign_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(
                ckey,
                mapping={
                    "tenant": tenant,
                    "total": total,
                    "created_at": now,
                    "name": name or "",
                    "priority": priority,
                    "family": families[0],
                    "fed": 0,
                    "callback_url": callback_url or "",
                },
            )
            pipe.hset(counts, mapping={**{s.value: 0 for s in JobState}, "queued": total})
            pipe.zadd(keys.tenant_campaigns(tenant), {campaign_id: now})
            fams = keys.campaign_families(campaign_id)
            pipe.sadd(fams, *families)
            for key in (ckey, counts, keys.tenant_campaigns(tenant), fams):
                pipe.expire(key, self.ttl_s)
            pipe.zadd(keys.FEED_CAMPAIGNS, {campaign_id: now})
            pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot record campaign: {e}") from e

    def add_fed(
        self, campaign_id: str, tenant: str, prefix: str, jobs: list[tuple[str, JobSpec]]
    ) -> None:
        """Records for jobs being fed, queued (the campaign's counts already hold them); a job
        that has a record already keeps it (a feed run again after a crash)."""
        now = time.time()
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id, spec in jobs:
                self._add(
                    keys=[keys.job(job_id), keys.INFLIGHT],
                    args=[
                        self.ttl_s,
                        "campaign_id",
                        campaign_id,
                        "state",
                        JobState.QUEUED.value,
                        "spec",
                        spec.model_dump_json(),
                        "s3_key",
                        keys.image_object(prefix, tenant, campaign_id, job_id),
                        "created_at",
                        now,
                        "updated_at",
                        now,
                    ],
                    client=pipe,
                )
            pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot record jobs: {e}") from e

    def campaign_families(self, campaign_id: str) -> list[str]:
        """The model families a campaign's jobs use."""
        try:
            return sorted(
                text(f) for f in self.client.smembers(keys.campaign_families(campaign_id))
            )
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: {e}") from e

    # -- move ---------------------------------------------------------------------------------

    def move(
        self,
        job_id: str,
        campaign_id: str,
        to: JobState,
        allowed: Iterable[JobState],
        *,
        fence: str = "",
        **fields: object,
    ) -> tuple[bool, JobState | None, bool]:
        """Move a job to ``to`` if it is in one of ``allowed`` (and the ``fence`` holds).

        Returns:
            (moved, the state it was in, whether this move finished the campaign).
        """
        argv: list[str | float] = [to.value, time.time(), _states(allowed), fence]
        for name, value in fields.items():
            argv += [name, value if isinstance(value, str | int | float) else json.dumps(value)]
        try:
            ok, cur, complete = self._transition(
                keys=[
                    keys.job(job_id),
                    keys.campaign_counts(campaign_id),
                    keys.campaign(campaign_id),
                    keys.INFLIGHT,
                ],
                args=argv,
            )
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot update job {job_id}: {e}") from e
        cur = cur.decode() if isinstance(cur, bytes) else cur
        return bool(ok), (JobState(cur) if cur else None), bool(complete)

    def move_many(
        self,
        campaign_id: str,
        job_ids: list[str],
        to: JobState,
        allowed: Iterable[JobState],
        *,
        unmoved_since: dict[str, float] | None = None,
    ) -> list[str]:
        """Move many jobs in pipelined batches; returns the ids that moved.

        Args:
            unmoved_since: job id -> the ``updated_at`` seen; a job moved since stays put.
        """
        moved: list[str] = []
        allowed_s = _states(allowed)
        since = unmoved_since or {}
        ck = [keys.campaign_counts(campaign_id), keys.campaign(campaign_id), keys.INFLIGHT]
        try:
            for start in range(0, len(job_ids), BATCH):
                chunk = job_ids[start : start + BATCH]
                pipe = self.client.pipeline(transaction=False)
                now = time.time()
                for job_id in chunk:
                    self._transition(
                        keys=[keys.job(job_id), *ck],
                        args=[
                            to.value,
                            now,
                            allowed_s,
                            unmoved_fence(since[job_id]) if job_id in since else "",
                        ],
                        client=pipe,
                    )
                for job_id, (ok, _, _) in zip(chunk, pipe.execute(), strict=True):
                    if ok:
                        moved.append(job_id)
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot update jobs: {e}") from e
        return moved

    def moves(
        self,
        campaign_id: str,
        moves: list[tuple[str, dict[str, Any]]],
        to: JobState,
        allowed: Iterable[JobState],
        *,
        timings: dict[str, dict[str, float]] | None = None,
        usage: dict[str, float] | None = None,
        fence: str = "",
    ) -> list[tuple[bool, JobState | None, bool]]:
        """Several jobs' moves (each with its own fields) and timings in one round trip.

        Args:
            moves: (job id, fields to set with the move) pairs.
            timings: job id -> timings to record, before the moves.
            usage: amounts to add to the campaign's usage (images, compute seconds).
            fence: ``start_fence`` or ``own_fence`` for every move, or none.

        Returns:
            (moved, the state it was in, whether this move finished the campaign) per job.
        """
        now, allowed_s = time.time(), _states(allowed)
        ck = [keys.campaign_counts(campaign_id), keys.campaign(campaign_id), keys.INFLIGHT]
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id, values in (timings or {}).items():
                if values:
                    argv: list[str | float] = [
                        0
                    ]  # no TTL change: only an existing record gets timings
                    for k, v in values.items():
                        argv += [f"t_{k}", round(v, 6)]
                    self._update(keys=[keys.job(job_id)], args=argv, client=pipe)
            if usage:
                for name, amount in usage.items():
                    pipe.hincrbyfloat(keys.campaign_usage(campaign_id), name, amount)
                pipe.expire(keys.campaign_usage(campaign_id), self.ttl_s)
            for job_id, fields in moves:
                argv = [to.value, now, allowed_s, fence]
                for name, value in fields.items():
                    argv += [name, value]
                self._transition(keys=[keys.job(job_id), *ck], args=argv, client=pipe)
            executed = pipe.execute()
            results = executed[len(executed) - len(moves) :]
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot update jobs: {e}") from e
        out = []
        for ok, cur, complete in results:
            cur = cur.decode() if isinstance(cur, bytes) else cur
            out.append((bool(ok), JobState(cur) if cur else None, bool(complete)))
        return out

    def count_deliveries(self, job_ids: list[str], stage: str) -> list[int]:
        """Count one delivery of (job, stage) for each job; returns the counts (poison guard)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.incr(keys.attempts(job_id, stage))
                pipe.expire(keys.attempts(job_id, stage), self.ttl_s)
            return [int(n) for n in pipe.execute()[::2]]
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: {e}") from e

    def _fields(self, job_ids: list[str], *names: str) -> list[list[bytes | None]]:
        """Some fields of each job's record (one round trip)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), *names)
            return pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: {e}") from e

    def states(self, job_ids: list[str]) -> list[JobState | None]:
        rows = self._fields(job_ids, "state")
        return [None if v is None else JobState(v.decode()) for (v,) in rows]

    def held(self, job_ids: list[str], stage: JobState, execution: str) -> list[bool]:
        """Whether each job is still in ``stage`` and still this execution's (not cancelled,
        not taken over by a redelivery of its message)."""
        return [
            state == stage.value.encode() and (ex is None or ex.decode() == execution)
            for state, ex in self._fields(job_ids, "state", "exec")
        ]

    def executions(self, job_ids: list[str]) -> list[str | None]:
        """The execution each job's stage belongs to now (None: not running)."""
        return [None if v is None else v.decode() for (v,) in self._fields(job_ids, "exec")]

    # -- read ---------------------------------------------------------------------------------

    def state(self, job_id: str) -> JobState | None:
        value = self.client.hget(keys.job(job_id), "state")
        return None if value is None else JobState(text(value))

    def get(self, job_id: str) -> JobRecord:
        records = self.get_many([job_id])
        if records[0] is None:
            raise NotFound(f"unknown job {job_id}")
        return records[0]

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        out: list[JobRecord | None] = []
        try:
            for start in range(0, len(job_ids), BATCH):
                pipe = self.client.pipeline(transaction=False)
                chunk = job_ids[start : start + BATCH]
                for job_id in chunk:
                    pipe.hgetall(keys.job(job_id))
                for job_id, raw in zip(chunk, pipe.execute(), strict=True):
                    # No state: not a whole record (never fed, or written around a Redis loss).
                    out.append(_record(job_id, raw) if raw and b"state" in raw else None)
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot read jobs: {e}") from e
        return out

    def campaign(self, campaign_id: str) -> dict[str, Any] | None:
        """The campaign hash and its counts, or None if Redis does not know it."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(keys.campaign(campaign_id))
            pipe.hgetall(keys.campaign_counts(campaign_id))
            raw, counts = pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot read campaign {campaign_id}: {e}") from e
        if not raw:
            return None
        info: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        info["counts"] = {s.value: 0 for s in JobState} | {
            k.decode(): int(v) for k, v in counts.items()
        }
        return info

    def usage(self, campaign_ids: list[str]) -> list[dict[str, float]]:
        """Each campaign's usage hash (images, compute seconds per stage/family/device)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for cid in campaign_ids:
                pipe.hgetall(keys.campaign_usage(cid))
            raw = pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot read usage: {e}") from e
        return [{k.decode(): float(v) for k, v in r.items()} for r in raw]

    def campaign_job_ids(self, campaign_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """The ids of the campaign's jobs ``start`` to ``stop`` (inclusive; -1: the last)."""
        info = self.campaign(campaign_id)
        if info is None:
            return []
        ids = JobIds(campaign_id, int(info["total"]))
        return ids[start : (None if stop == -1 else stop + 1)]

    def tenant_campaigns(self, tenant: str, limit: int = 100) -> list[str]:
        # Without withscores a range is its members only (redis-py types every range's reply).
        ids = cast(list[bytes], self.client.zrevrange(keys.tenant_campaigns(tenant), 0, limit - 1))
        return [i.decode() for i in ids]


def _record(job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
    d = {k.decode(): v.decode() for k, v in raw.items()}
    timings = {k[2:]: float(v) for k, v in d.items() if k.startswith("t_")}
    return JobRecord(
        job_id=job_id,
        campaign_id=d["campaign_id"],
        state=JobState(d["state"]),
        spec=JobSpec.model_validate_json(d["spec"]),
        s3_key=d.get("s3_key") or None,
        error=json.loads(d["error"]) if d.get("error") else None,
        timings=timings,
        created_at=float(d["created_at"]) if d.get("created_at") else None,
        updated_at=float(d["updated_at"]) if d.get("updated_at") else None,
    )
