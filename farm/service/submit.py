"""Submission: validate everything, write the manifest, record the campaign, feed its first jobs."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import redis
from pydantic import BaseModel

from farm import keys
from farm.domain.campaigns import CampaignSpec, plan_grid
from farm.domain.jobs import JobSpec, new_id
from farm.domain.manifest import CHUNK, Manifest, chunked
from farm.domain.validation import check_enabled, check_inputs
from farm.errors import Conflict, QuotaExceeded, ServiceUnavailable
from farm.service.feed import Feeding
from farm.service.manifests import ManifestCache
from farm.settings import Settings
from farm.stores.connect import text
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore


class Submitted(BaseModel):
    """What a submission returns (the API's response body too)."""

    campaign_id: str
    job_count: int
    created: bool  # False when an Idempotency-Key matched an earlier campaign


class Submission:
    """Takes campaigns and input images in.

    It writes the manifest (and tells ``manifests``), records the campaign, and has ``feeding``
    send the first jobs; ``feeding`` also counts a tenant's queued jobs for its quota.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        records: RecordStore,
        objects: ObjectStore,
        manifests: ManifestCache,
        feeding: Feeding,
    ):
        self.settings = settings
        self.redis = client
        self.records = records
        self.objects = objects
        self.manifests = manifests
        self.feeding = feeding

    def submit_campaign(
        self,
        spec: CampaignSpec | dict,
        *,
        tenant: str = keys.DEFAULT_TENANT,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Validate, write the manifest, record and enqueue a campaign.

        Raises:
            InvalidJob: a spec is invalid; nothing was written or enqueued.
            Conflict: the Idempotency-Key was used before with a different request.
            ServiceUnavailable: Redis or S3 cannot be reached.
        """
        campaign = CampaignSpec.parse(spec)
        if campaign.grid is not None:
            # A grid is never expanded: its size, seeds and every value are checked from its
            # lists, and its jobs are computed from the manifest as they are fed.
            total, seeds, specs = plan_grid(campaign)
        else:
            specs = campaign.expand()
            total, seeds = len(specs), None
        check_enabled(specs, self.settings.enabled_families)
        check_inputs(specs, self._input_meta(tenant))
        if campaign.callback_url:
            from farm.webhooks import check_url

            check_url(campaign.callback_url, self.settings.webhook_allow_private)
        self._check_quota(tenant, total)
        campaign_id = new_id()
        if idempotency_key:
            body = hashlib.sha256(campaign.model_dump_json().encode()).hexdigest()
            ikey = keys.idempotency(tenant, idempotency_key)
            try:
                claimed = self.redis.set(
                    ikey, f"{campaign_id}:{body}", nx=True, ex=self.settings.record_ttl_s
                )
                if not claimed:
                    earlier_id, earlier_body = text(self.redis.get(ikey)).split(":", 1)
                    if earlier_body != body:
                        raise Conflict(
                            f"Idempotency-Key {idempotency_key!r} was used for a different campaign"
                        )
                    info = self.records.campaign(earlier_id)
                    return Submitted(
                        campaign_id=earlier_id,
                        job_count=int(info["total"]) if info else total,
                        created=False,
                    )
            except redis.RedisError as e:
                raise ServiceUnavailable(f"redis: {e}") from e
        try:
            self._create(campaign_id, tenant, campaign, specs, total, seeds)
        except BaseException:
            if idempotency_key:
                self.redis.delete(keys.idempotency(tenant, idempotency_key))
            raise
        # The first jobs go out now (as the fair share allows), not at the feeder's next pass.
        self.feeding.feed_once()
        return Submitted(campaign_id=campaign_id, job_count=total, created=True)

    def _check_quota(self, tenant: str, total: int) -> None:
        """A tenant may have at most ``tenant_max_queued`` jobs waiting, this campaign's too."""
        limit = self.settings.tenant_max_queued
        try:
            waiting = self.feeding.queued_jobs(tenant)
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: {e}") from e
        if waiting + total > limit:
            raise QuotaExceeded(
                f"tenant {tenant!r} would have {waiting + total} jobs queued; at most {limit} "
                f"(FARM_TENANT_MAX_QUEUED): wait for some to finish, or cancel a campaign"
            )

    def _input_meta(self, tenant: str) -> Callable[[str], dict | None]:
        """A cached lookup of an upload's stored metadata (None when there is no such upload)."""
        seen: dict[str, dict | None] = {}

        def meta(ref: str) -> dict | None:
            if ref not in seen:
                seen[ref] = self.objects.head(
                    keys.input_object(self.settings.s3_prefix, tenant, ref)
                )
            return seen[ref]

        return meta

    def upload_input(self, data: bytes, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        """Store an input image (checked first); returns its reference for job specs."""
        from farm.stores.inputs import array_to_png, check_image

        if data.startswith(b"\x93NUMPY"):
            # A mask as an array (the guides build masks with NumPy): stored as its PNG.
            data = array_to_png(data)
        img = check_image(data)
        key = keys.input_object(self.settings.s3_prefix, tenant, img.ref)
        if self.objects.head(key) is None:
            meta = {"width": str(img.width), "height": str(img.height), "format": img.format}
            self.objects.put(key, data, f"image/{img.format.lower()}", metadata=meta)
        return {"input": img.ref, "width": img.width, "height": img.height, "format": img.format}

    def _create(
        self,
        campaign_id: str,
        tenant: str,
        campaign: CampaignSpec,
        specs: list[JobSpec],
        total: int,
        seeds: list[int] | None,
    ) -> None:
        prefix = self.settings.s3_prefix
        explicit = campaign.grid is None
        manifest = Manifest(
            campaign_id=campaign_id,
            tenant=tenant,
            prefix=prefix,
            total=total,
            spec=campaign.model_dump(mode="json", exclude={"jobs"}),
            created_at=time.time(),
            seeds=seeds,
            chunks=-(-total // CHUNK) if explicit else 0,
        )
        chunks = chunked(specs) if explicit else []
        if explicit:
            for n, chunk in enumerate(chunks):
                lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in chunk) + "\n"
                key = keys.manifest_chunk(prefix, tenant, campaign_id, n)
                self.objects.put(key, lines.encode(), "application/x-ndjson")
        # The manifest before Redis: once it exists, the campaign can be rebuilt from S3 alone
        # (the chunks before the header that names them; the marker lets a feeder find it).
        self.objects.put(
            keys.manifest_object(prefix, tenant, campaign_id),
            json.dumps(manifest.header(), ensure_ascii=False).encode(),
            "application/json",
        )
        self.objects.put(keys.active_marker(prefix, campaign_id), tenant.encode(), "text/plain")
        self.manifests.remember(manifest, chunks)
        self.records.create_campaign(
            campaign_id,
            tenant,
            total=total,
            families=list(dict.fromkeys(s.model for s in specs)),
            name=campaign.name,
            priority=campaign.priority,
            created_at=manifest.created_at,
            callback_url=campaign.callback_url,
        )
