"""Reading: campaign status (with why it waits), campaign lists, job pages, the fleet."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import redis

from farm import fleet, keys
from farm.domain.jobs import JobRecord, JobState, is_id
from farm.domain.manifest import JobIds
from farm.errors import InvalidJob, NotFound
from farm.service.handle import Campaign
from farm.service.manifests import ManifestCache
from farm.settings import Settings
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore
from farm.stores.transitions import ACTIVE


class Views:
    """Reads campaigns, jobs, usage and the fleet; writes nothing.

    Jobs not fed yet are described from the manifest (``manifests``); a done job's image is
    presigned by ``objects``.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        records: RecordStore,
        objects: ObjectStore,
        manifests: ManifestCache,
    ):
        self.settings = settings
        self.redis = client
        self.records = records
        self.objects = objects
        self.manifests = manifests

    def campaign(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> Campaign:
        """A handle on one of the tenant's campaigns (``farm.service.Campaign``)."""
        info = self.info(campaign_id, tenant)
        return Campaign(self, campaign_id, JobIds(campaign_id, int(info["total"])), tenant)

    def info(self, campaign_id: str, tenant: str) -> dict:
        """The campaign's record, if it is the tenant's.

        Raises:
            NotFound: no such campaign, or another tenant's.
        """
        if not is_id(campaign_id):
            raise NotFound("unknown campaign: not a campaign id (32 hex digits)")
        info = self.records.campaign(campaign_id)
        if info is None or info.get("tenant") != tenant:
            # Another tenant's campaign is indistinguishable from a missing one.
            raise NotFound(f"unknown campaign {campaign_id}")
        return info

    def status(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        info = self.info(campaign_id, tenant)
        counts = info["counts"]
        total = int(info["total"])
        now = time.time()
        started = float(info["started_at"]) if info.get("started_at") else None
        finished = float(info["finished_at"]) if info.get("finished_at") else None
        rate = None
        if started is not None and counts["done"]:
            rate = counts["done"] / max((finished or now) - started, 1e-6)
        remaining = sum(counts[s.value] for s in ACTIVE)
        eta = (remaining / rate) if rate and remaining else (0.0 if finished else None)
        if info.get("cancelled"):
            state = "cancelled"
        elif finished:
            state = "finished"
        elif started:
            state = "running"
        else:
            state = "queued"
        reasons = []
        if remaining and state in ("queued", "running"):
            # Accepted but nobody to run it (a fleet scaled to zero, a family not placed yet):
            # waiting, with the reason, never failed.
            reasons = fleet.waiting_reasons(self.redis, self.records.campaign_families(campaign_id))
            if reasons:
                state = "waiting"
        return {
            "id": campaign_id,
            "name": info.get("name") or None,
            "priority": info.get("priority") or "normal",
            "state": state,
            "waiting_reason": "; ".join(reasons) or None,
            "total": total,
            "counts": counts,
            "images_per_second": round(rate, 4) if rate else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "created_at": float(info["created_at"]),
            "started_at": started,
            "finished_at": finished,
            "usage": self._usage([campaign_id]),
            "webhook": self._webhook(campaign_id, info),
        }

    def _webhook(self, campaign_id: str, info: dict) -> dict | None:
        if not info.get("callback_url"):
            return None
        log = self.redis.lrange(keys.webhook_log(campaign_id), -20, -1)
        return {"url": info["callback_url"], "deliveries": [json.loads(x) for x in log]}

    def _usage(self, campaign_ids: list[str]) -> dict:
        from farm.domain.usage import summary

        prices = {"cpu": self.settings.price_cpu_hour, "gpu": self.settings.price_gpu_hour}
        return summary(self.records.usage(campaign_ids), prices, self.settings.currency)

    def usage(self, *, tenant: str = keys.DEFAULT_TENANT, limit: int = 10_000) -> dict:
        """What a tenant's campaigns used: images, compute seconds per stage and family, cost."""
        ids = self.records.tenant_campaigns(tenant, limit=limit)
        return {"tenant": tenant, "campaigns": len(ids), **self._usage(ids)}

    def list_campaigns(self, *, tenant: str = keys.DEFAULT_TENANT, limit: int = 100) -> list[dict]:
        out = []
        for cid in self.records.tenant_campaigns(tenant, limit):
            try:
                out.append(self.status(cid, tenant=tenant))
            except NotFound:
                continue
        return out

    def jobs_page(
        self,
        campaign_id: str,
        *,
        tenant: str = keys.DEFAULT_TENANT,
        state: JobState | None = None,
        cursor: str | None = None,
        limit: int = 100,
        presign_s: int = 900,
    ) -> tuple[list[dict], str | None]:
        """One page of a campaign's jobs, optionally of one state, and the cursor to the next."""
        info = self.info(campaign_id, tenant)
        total = int(info["total"])
        fed = int(info.get("fed_before_cancel") or info.get("fed") or 0)
        # Jobs not fed yet have no records: queued (or cancelled), described by the manifest.
        unfed = JobState.CANCELLED if info.get("cancelled") else JobState.QUEUED
        end = total if state in (None, unfed) else min(fed, total)
        all_ids = JobIds(campaign_id, total)
        index = _decode_cursor(cursor)
        items: list[dict] = []
        while index < end and len(items) < limit:
            ids = all_ids[index : min(index + max(limit, 100), end)]
            for offset, rec in enumerate(self.records.get_many(ids)):
                if rec is None:
                    if index + offset < fed or state not in (None, unfed):
                        continue
                    items.append(self._unfed_view(campaign_id, tenant, index + offset, unfed))
                elif state is not None and rec.state != state:
                    continue
                else:
                    items.append(self._job_view(rec, presign_s))
                if len(items) == limit:
                    index += offset + 1
                    break
            else:
                index += len(ids)
        more = index < end
        return items, (_encode_cursor(index) if more else None)

    def iter_jobs(
        self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT, state: JobState | None = None
    ) -> Iterator[dict]:
        """Every job (or every job in ``state``), a page at a time: for streaming JSON lines."""
        cursor = None
        while True:
            items, cursor = self.jobs_page(
                campaign_id, tenant=tenant, state=state, cursor=cursor, limit=1000
            )
            yield from items
            if not cursor:
                return

    def iter_manifest(
        self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT
    ) -> Iterator[dict]:
        """The campaign's manifest as jobs (index, id, spec, image key), computed a chunk at a
        time from the header in S3: a million-job grid streams without being built."""
        self.info(campaign_id, tenant)
        manifest = self.manifests.manifest(campaign_id, tenant)
        for start in range(0, manifest.total, 1000):
            stop = min(start + 1000, manifest.total)
            specs = self.manifests.specs(manifest, start, stop)
            for i, spec in zip(range(start, stop), specs, strict=True):
                yield {
                    "index": i,
                    "job_id": manifest.job_id(i),
                    "spec": spec.to_dict(),
                    "key": manifest.key(i),
                }

    def _unfed_view(self, campaign_id: str, tenant: str, index: int, state: JobState) -> dict:
        manifest = self.manifests.manifest(campaign_id, tenant)
        spec = self.manifests.specs(manifest, index, index + 1)[0]
        return {
            "job_id": manifest.job_id(index),
            "state": state.value,
            "spec": spec.to_dict(),
            "seed": spec.seed,
            "s3_key": manifest.key(index),
            "s3_keys": [],
            "url": None,
            "urls": [],
            "timings": {},
            "error": None,
        }

    def _job_view(self, rec: JobRecord, presign_s: int) -> dict:
        done = rec.state == JobState.DONE
        # A done job always has its key; the check is for the type, not a case that happens.
        url = self.objects.presigned_url(rec.s3_key, presign_s) if done and rec.s3_key else None
        return {
            "job_id": rec.job_id,
            "state": rec.state.value,
            "spec": rec.spec.to_dict(),
            "seed": rec.seed,
            "s3_key": rec.s3_key,
            "s3_keys": rec.s3_keys,
            "url": url,
            "urls": [self.objects.presigned_url(k, presign_s) for k in rec.s3_keys] if done else [],
            "timings": rec.timings,
            "error": rec.error,
        }

    def fleet(self) -> dict:
        """Every queue of the enabled families (depth, consumers) and every live worker."""
        return fleet.fleet(self.redis, self.settings.enabled_families)


def _encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(str(index).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        value = int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except ValueError:
        raise InvalidJob("cursor", "not a cursor returned by this API") from None
    if value < 0:
        raise InvalidJob("cursor", "not a cursor returned by this API")
    return value
