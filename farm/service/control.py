"""Control: cancel, retry failed jobs, resume from S3 (after Redis lost everything)."""

from __future__ import annotations

import json
import time

from farm import keys
from farm.domain.jobs import JobSpec, JobState
from farm.errors import NotFound
from farm.stores.records import ACTIVE


class Control:
    """Farm's control verbs (mixed into ``Farm``)."""

    # -- control ------------------------------------------------------------------------------

    def cancel(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        """Cancel: queued jobs never run, running ones finish, nothing new is enqueued.

        Only this campaign's records move; other campaigns' messages are never touched (the
        cancelled jobs' messages stay queued and are skipped when a worker reaches them).
        """
        self._info(campaign_id, tenant)
        self.redis.hset(keys.campaign(campaign_id), "cancelled", time.time())
        ids = self.records.campaign_job_ids(campaign_id)
        # A job the prior is working on moves too: the prior then finds it cancelled and does
        # not enqueue its decoder. A job already decoding finishes.
        self.records.move_many(
            campaign_id, ids, JobState.CANCELLED, (JobState.QUEUED, JobState.PRIOR)
        )
        self._finalize_if_complete(campaign_id)
        return self.status(campaign_id, tenant=tenant)

    def retry_failed(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> int:
        """Re-enqueue the campaign's failed jobs; returns how many."""
        self._info(campaign_id, tenant)
        ids = self.records.campaign_job_ids(campaign_id)
        moved = self.records.move_many(campaign_id, ids, JobState.QUEUED, (JobState.FAILED,))
        self._requeue(campaign_id, tenant, moved)
        return len(moved)

    def resume(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        """Re-enqueue every job whose output is missing, rebuilding Redis state from S3 if lost.

        Returns:
            {"requeued": n, "present": m}
        """
        prefix = self.settings.s3_prefix
        try:
            manifest = json.loads(
                self.objects.get(keys.manifest_object(prefix, tenant, campaign_id))
            )
        except NotFound:
            raise NotFound(f"unknown campaign {campaign_id}") from None
        present = self.objects.list_keys(keys.campaign_prefix(prefix, tenant, campaign_id) + "/")
        jobs = [
            (j["job_id"], JobSpec.model_validate(j["spec"]), j["key"]) for j in manifest["jobs"]
        ]

        def complete(spec: JobSpec, key: str) -> bool:
            return all(k in present for k in keys.image_keys(key, spec.num_images_per_prompt))

        done_ids = [j for j, s, key in jobs if complete(s, key)]
        missing = [j for j, s, key in jobs if not complete(s, key)]
        if self.records.campaign(campaign_id) is None:
            # Redis lost everything: rebuild the records from the manifest, in its order.
            self.records.create_campaign(
                campaign_id,
                tenant,
                [(j, s) for j, s, _ in jobs],
                prefix=prefix,
                name=manifest.get("name"),
                priority=manifest.get("spec", {}).get("priority") or "normal",
                states=dict.fromkeys(done_ids, JobState.DONE),
            )
            requeue = missing
        else:
            self._info(campaign_id, tenant)
            self.redis.hdel(keys.campaign(campaign_id), "cancelled")
            everything = tuple(JobState)
            self.records.move_many(campaign_id, done_ids, JobState.DONE, everything)
            requeue = self.records.move_many(campaign_id, missing, JobState.QUEUED, everything)
        self._requeue(campaign_id, tenant, requeue)
        self._finalize_if_complete(campaign_id)
        return {"requeued": len(requeue), "present": len(done_ids)}

    def _requeue(self, campaign_id: str, tenant: str, job_ids: list[str]) -> None:
        if not job_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for j in job_ids:
            pipe.delete(keys.attempts(j, "prior"), keys.attempts(j, "decoder"))
        pipe.execute()
        recs = self.records.get_many(job_ids)
        ids = self.records.campaign_job_ids(campaign_id)
        info = self.records.campaign(campaign_id) or {}
        self._schedule(
            campaign_id,
            tenant,
            [(r.job_id, r.spec) for r in recs if r is not None],
            ids,
            info.get("priority") or "normal",
        )

    def _finalize_if_complete(self, campaign_id: str) -> None:
        info = self.records.campaign(campaign_id)
        if info and sum(info["counts"][s.value] for s in ACTIVE) == 0:
            self.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
