"""Control: cancel, retry failed jobs, resume from S3 (after Redis lost everything)."""

from __future__ import annotations

import time
from typing import Any

import redis

from farm import keys
from farm.domain.jobs import JobState, is_id
from farm.domain.manifest import JobIds
from farm.errors import NotFound, ServiceUnavailable
from farm.service.enqueue import Enqueuer
from farm.service.feed import Feeding
from farm.service.rebuild import Rebuilder
from farm.service.reconcile import Reconciler
from farm.service.views import Views
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore
from farm.stores.transitions import ACTIVE

# KEYS: campaign, counts. ARGV: now. Stops feeding: the jobs not fed yet are cancelled by count
# (they have no records). Returns {jobs fed before, whether this finished the campaign}.
_CANCEL = """
local c = redis.call('HMGET', KEYS[1], 'fed', 'total', 'cancelled')
local fed, total = tonumber(c[1] or '0'), tonumber(c[2])
if not c[3] then
  redis.call('HSET', KEYS[1], 'cancelled', ARGV[1], 'fed_before_cancel', fed)
end
local unfed = total - fed
redis.call('HSET', KEYS[1], 'fed', total)
if unfed > 0 then
  redis.call('HINCRBY', KEYS[2], 'queued', -unfed)
  redis.call('HINCRBY', KEYS[2], 'cancelled', unfed)
end
local n = redis.call('HMGET', KEYS[2], 'done', 'failed', 'cancelled')
local ended = (tonumber(n[1]) or 0) + (tonumber(n[2]) or 0) + (tonumber(n[3]) or 0)
local complete = 0
if unfed > 0 and ended == total then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[1])
  complete = 1
end
return {fed, complete}
"""

# KEYS: campaign, counts, feed list. ARGV: now. Undoes a cancel's count of the unfed jobs.
_UNCANCEL = """
local c = redis.call('HMGET', KEYS[1], 'cancelled', 'fed_before_cancel', 'total')
if not c[1] then return 0 end
local before, total = tonumber(c[2] or c[3]), tonumber(c[3])
local unfed = total - before
redis.call('HDEL', KEYS[1], 'cancelled', 'fed_before_cancel')
redis.call('HSET', KEYS[1], 'fed', before)
if unfed > 0 then
  redis.call('HINCRBY', KEYS[2], 'cancelled', -unfed)
  redis.call('HINCRBY', KEYS[2], 'queued', unfed)
  redis.call('HDEL', KEYS[1], 'finished_at')
end
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
return unfed
"""


class Control:
    """Cancels, retries and resumes campaigns.

    It checks ownership and reports through ``views``, sends jobs again through ``enqueuer``,
    rebuilds a campaign Redis lost through ``rebuilder``, sends the stranded jobs of a resumed
    campaign through ``reconciler`` and feeds its unfed jobs through ``feeding``; ``app`` sends
    the finalize task.

    Args:
        prefix: the S3 prefix the campaigns' images live under (``settings.s3_prefix``).
    """

    def __init__(
        self,
        client: redis.Redis,
        records: RecordStore,
        objects: ObjectStore,
        app: Any,
        views: Views,
        enqueuer: Enqueuer,
        feeding: Feeding,
        rebuilder: Rebuilder,
        reconciler: Reconciler,
        *,
        prefix: str,
    ):
        self.redis = client
        self.records = records
        self.objects = objects
        self.app = app
        self.views = views
        self.enqueuer = enqueuer
        self.feeding = feeding
        self.rebuilder = rebuilder
        self.reconciler = reconciler
        self.prefix = prefix
        self._cancel = client.register_script(_CANCEL)  # no round trip until its first call
        self._uncancel = client.register_script(_UNCANCEL)

    def cancel(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        """Cancel: queued jobs never run, running ones finish, nothing new is fed or enqueued.

        Only this campaign's records move; other campaigns' messages are never touched (the
        cancelled jobs' messages stay queued and are skipped when a worker reaches them).
        """
        info = self.views.info(campaign_id, tenant)
        fed, complete = self._cancel(
            keys=[keys.campaign(campaign_id), keys.campaign_counts(campaign_id)],
            args=[time.time()],
        )
        ids = JobIds(campaign_id, int(info["total"]))[: int(fed)]
        # A job the prior is working on moves too: the prior then finds it cancelled and does
        # not enqueue its decoder. A job already decoding finishes.
        self.records.move_many(
            campaign_id, ids, JobState.CANCELLED, (JobState.QUEUED, JobState.PRIOR)
        )
        self._finalize_if_complete(campaign_id)
        return self.views.status(campaign_id, tenant=tenant)

    def retry_failed(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> int:
        """Re-enqueue the campaign's failed jobs; returns how many."""
        info = self.views.info(campaign_id, tenant)
        ids = JobIds(campaign_id, int(info["total"]))[: int(info.get("fed") or 0)]
        moved = self.records.move_many(campaign_id, ids, JobState.QUEUED, (JobState.FAILED,))
        self._requeue(campaign_id, tenant, moved)
        return len(moved)

    def resume(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        """Re-enqueue every job whose output is missing, rebuilding Redis state from S3 if lost.

        Returns:
            {"requeued": n, "present": m}: n is every job that will run again (sent again now,
            or fed later: the ones a cancel stopped before they were fed).
        """
        if not is_id(campaign_id):
            raise NotFound("unknown campaign: not a campaign id (32 hex digits)")
        if not self.redis.hexists(keys.campaign(campaign_id), "total"):
            # Redis lost everything: rebuild from the manifest; the feeder sends the jobs whose
            # images are missing and marks the others done.
            try:
                found = self.rebuilder.rebuild(campaign_id, tenant)
            except NotFound:
                raise NotFound(f"unknown campaign {campaign_id}") from None
            self.feeding.feed_once()
            rebuilt = self.records.campaign(campaign_id)
            if rebuilt is None or "total" not in rebuilt:
                # Another process (the feeder, a resume) is rebuilding it and has not recorded
                # it yet.
                raise ServiceUnavailable(
                    f"campaign {campaign_id} is being rebuilt from S3: resume it again shortly"
                )
            total = int(rebuilt["total"])
            return {"requeued": total - found, "present": found}
        info = self.views.info(campaign_id, tenant)
        # The unfed jobs a cancel counted out are the feeder's again: they run too.
        restored = self._uncancel(
            keys=[
                keys.campaign(campaign_id),
                keys.campaign_counts(campaign_id),
                keys.FEED_CAMPAIGNS,
            ],
            args=[time.time(), campaign_id],
        )
        info = self.views.info(campaign_id, tenant)
        present = self.objects.list_keys(
            keys.campaign_prefix(self.prefix, tenant, campaign_id) + "/"
        )
        ids = JobIds(campaign_id, int(info["total"]))[: int(info.get("fed") or 0)]
        done_ids, failed, whole = [], [], 0
        for start in range(0, len(ids), 1000):
            for rec in self.records.get_many(ids[start : start + 1000]):
                if rec is None:
                    continue
                if all(k in present for k in rec.s3_keys):
                    whole += 1
                    if rec.state != JobState.DONE:
                        done_ids.append(rec.job_id)
                elif rec.state in (JobState.FAILED, JobState.CANCELLED):
                    failed.append(rec.job_id)
        everything = tuple(JobState)
        self.records.move_many(campaign_id, done_ids, JobState.DONE, everything)
        requeue = self.records.move_many(
            campaign_id, failed, JobState.QUEUED, (JobState.FAILED, JobState.CANCELLED)
        )
        self._requeue(campaign_id, tenant, requeue)
        # Jobs in flight are sent again only if no message carries them: a healthy queued or
        # running job is never sent twice, however often (and from however many clients)
        # resume is called.
        stranded = self.reconciler.reconcile(grace_s=0.0, campaign_id=campaign_id)
        self._finalize_if_complete(campaign_id)
        self.feeding.feed_once()
        return {"requeued": len(requeue) + len(stranded) + int(restored), "present": whole}

    def _requeue(self, campaign_id: str, tenant: str, job_ids: list[str]) -> None:
        if not job_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for j in job_ids:
            pipe.delete(keys.attempts(j, "prior"), keys.attempts(j, "decoder"))
        pipe.execute()
        self.enqueuer.send_again(campaign_id, tenant, job_ids)

    def _finalize_if_complete(self, campaign_id: str) -> None:
        info = self.records.campaign(campaign_id)
        if info and sum(info["counts"][s.value] for s in ACTIVE) == 0:
            self.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
