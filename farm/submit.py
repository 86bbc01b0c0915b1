"""The Python submission API (direct to Redis; the HTTP API and its client build on it).

    farm = Farm(Settings.load())
    campaign = farm.submit([{"prompt": "a red cat", "seed": 1}, ...])
    records = campaign.wait(progress=True)

Every spec is validated before anything is written or enqueued: one bad job refuses the list.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from farm import keys
from farm.errors import InvalidJob, JobFailed, ServiceUnavailable
from farm.jobs import JobRecord, JobSpec, new_id
from farm.records import RecordStore, count_states
from farm.settings import Settings


def validate(jobs: Iterable[Any]) -> list[JobSpec]:
    """Validate every spec and draw missing seeds. Raises InvalidJob naming the job and field."""
    specs = [JobSpec.parse(j, index=i).with_seed() for i, j in enumerate(jobs)]
    if not specs:
        raise InvalidJob("jobs", "must hold at least one job")
    return specs


class Farm:
    """Submits jobs and reads their records."""

    def __init__(self, settings: Settings, *, client: redis.Redis | None = None, app=None):
        settings.require_endpoints()
        self.settings = settings
        self.redis = client or redis.Redis.from_url(settings.redis_url)
        self.records = RecordStore(self.redis, settings.record_ttl_s)
        if app is None:
            from workers.app import create_app

            app = create_app(settings)
        self.app = app

    def submit(self, jobs: Iterable[Any], *, campaign_id: str | None = None) -> Campaign:
        """Validate, record and enqueue jobs as one campaign.

        Raises:
            InvalidJob: a spec is invalid; nothing was recorded or enqueued.
            ServiceUnavailable: Redis cannot be reached.
        """
        specs = validate(jobs)
        campaign_id = campaign_id or new_id()
        pairs = [(new_id(), spec) for spec in specs]
        self.records.create(campaign_id, pairs)
        try:
            with self.app.producer_or_acquire() as producer:
                for job_id, spec in pairs:
                    self.app.send_task(
                        keys.PRIOR_TASK,
                        kwargs={
                            "job_id": job_id,
                            "campaign_id": campaign_id,
                            "spec": spec.to_dict(),
                        },
                        producer=producer,
                    )
        except (redis.RedisError, OSError) as e:
            raise ServiceUnavailable(f"broker: cannot enqueue: {e}") from e
        return Campaign(self, campaign_id, [j for j, _ in pairs])

    def campaign(self, campaign_id: str) -> Campaign:
        return Campaign(self, campaign_id, self.records.campaign_job_ids(campaign_id))


@dataclass
class Campaign:
    """A handle on submitted jobs."""

    farm: Farm
    id: str
    job_ids: list[str]

    def records(self) -> list[JobRecord]:
        return [r for r in self.farm.records.get_many(self.job_ids) if r is not None]

    def status(self) -> dict[str, int]:
        return count_states(self.farm.records.get_many(self.job_ids))

    def wait(
        self, timeout: float | None = None, *, progress: bool = False, poll_s: float = 0.25
    ) -> list[JobRecord]:
        """Block until every job is done or failed; return the records.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.job_ids), unit="img", desc=f"campaign {self.id[:8]}")
        try:
            while True:
                recs = self.records()
                finished = sum(r.state.terminal for r in recs)
                if bar is not None:
                    bar.update(finished - bar.n)
                    failed = sum(r.state.value == "failed" for r in recs)
                    bar.set_postfix(failed=failed, refresh=False)
                if finished == len(self.job_ids):
                    return recs
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"campaign {self.id}: {self.status()} after {timeout}s")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()

    def results(self, *, raise_on_failure: bool = False) -> list[JobRecord]:
        recs = self.records()
        if raise_on_failure:
            for r in recs:
                if r.state.value == "failed":
                    err = r.error or {}
                    raise JobFailed(r.job_id, err.get("type", "?"), err.get("message", ""))
        return recs
