"""Job records in Redis: one hash per job, one list of job ids per campaign."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator

import redis

from farm import keys
from farm.errors import NotFound, ServiceUnavailable
from farm.jobs import JobRecord, JobSpec, JobState

BATCH = 500  # pipelined round trips: a campaign of 10,000 jobs is 20 of them


class RecordStore:
    """Creates, updates and reads job records."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s

    def create(self, campaign_id: str, jobs: list[tuple[str, JobSpec]]) -> None:
        now = time.time()
        try:
            for start in range(0, len(jobs), BATCH):
                pipe = self.client.pipeline(transaction=False)
                chunk = jobs[start : start + BATCH]
                for job_id, spec in chunk:
                    key = keys.job(job_id)
                    pipe.hset(
                        key,
                        mapping={
                            "campaign_id": campaign_id,
                            "state": JobState.QUEUED.value,
                            "spec": spec.model_dump_json(),
                            "created_at": now,
                            "updated_at": now,
                        },
                    )
                    pipe.expire(key, self.ttl_s)
                pipe.rpush(keys.campaign_jobs(campaign_id), *(j for j, _ in chunk))
                pipe.expire(keys.campaign_jobs(campaign_id), self.ttl_s)
                pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot record jobs: {e}") from e

    def update(self, job_id: str, state: JobState, **fields) -> None:
        mapping = {"state": state.value, "updated_at": time.time()}
        for name, value in fields.items():
            mapping[name] = value if isinstance(value, str | int | float) else json.dumps(value)
        try:
            self.client.hset(keys.job(job_id), mapping=mapping)
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot update job {job_id}: {e}") from e

    def add_timing(self, job_id: str, name: str, seconds: float) -> None:
        self.client.hset(keys.job(job_id), f"t_{name}", round(seconds, 6))

    def state(self, job_id: str) -> JobState | None:
        value = self.client.hget(keys.job(job_id), "state")
        return None if value is None else JobState(value.decode())

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
                    out.append(_record(job_id, raw) if raw else None)
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot read jobs: {e}") from e
        return out

    def campaign_job_ids(self, campaign_id: str) -> list[str]:
        try:
            ids = self.client.lrange(keys.campaign_jobs(campaign_id), 0, -1)
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot read campaign {campaign_id}: {e}") from e
        if not ids:
            raise NotFound(f"unknown campaign {campaign_id}")
        return [i.decode() for i in ids]

    def iter_campaign(self, campaign_id: str) -> Iterator[JobRecord]:
        for rec in self.get_many(self.campaign_job_ids(campaign_id)):
            if rec is not None:
                yield rec


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
    )


def count_states(records: Iterable[JobRecord | None]) -> dict[str, int]:
    counts = {s.value: 0 for s in JobState}
    for r in records:
        if r is not None:
            counts[r.state.value] += 1
    return counts
