"""Rebuilding: after Redis lost the farm's state, each unfinished campaign is recorded again
from its manifest in S3, and the images S3 already has are noted (never rendered again)."""

from __future__ import annotations

import time

import redis

from farm import keys
from farm.domain.manifest import Manifest
from farm.errors import NotFound
from farm.service.manifests import ManifestCache
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore


class Rebuilder:
    """Records campaigns again from S3 (the feeder then feeds them; ``farm.service.feed``).

    Args:
        prefix: the S3 prefix the campaigns' active markers live under (``settings.s3_prefix``).
        ttl_s: how long the found-images bitmap is kept (``settings.record_ttl_s``).
    """

    def __init__(
        self,
        client: redis.Redis,
        records: RecordStore,
        objects: ObjectStore,
        manifests: ManifestCache,
        *,
        prefix: str,
        ttl_s: int,
    ):
        self.redis = client
        self.records = records
        self.objects = objects
        self.manifests = manifests
        self.prefix = prefix
        self.ttl_s = ttl_s

    def recover(self) -> list[str]:
        """After Redis lost the farm's state: every unfinished campaign (S3 markers) whose
        records are gone is rebuilt from its manifest and fed again. Returns their ids."""
        # Set before the scan: a loss during the scan removes it again, and the next pass
        # scans again (set after, it would hide that loss for good).
        if not self.redis.set(keys.FEED_EPOCH, str(time.time()), nx=True):
            return []
        rebuilt = []
        for key in self.objects.list_keys(f"{self.prefix}/_active/"):
            campaign_id = key.rsplit("/", 1)[1]
            if self.redis.hexists(keys.campaign(campaign_id), "total"):
                continue
            try:
                tenant = self.objects.get(key).decode()
                self.rebuild(campaign_id, tenant)
                rebuilt.append(campaign_id)
            except NotFound:
                continue
        return rebuilt

    def rebuild(self, campaign_id: str, tenant: str) -> int:
        """Redis knows nothing of the campaign: record it again from its manifest, note the
        images S3 already has (the feeder marks those jobs done, never renders them again).
        Returns how many images were found."""
        self.manifests.forget(campaign_id)
        manifest = self.manifests.manifest(campaign_id, tenant)
        if not self.redis.hsetnx(keys.campaign(campaign_id), "rebuilding", time.time()):
            since = float(self.redis.hget(keys.campaign(campaign_id), "rebuilding") or 0)
            if time.time() - since < 120:
                return 0  # another process (the feeder, a resume) is rebuilding it
            self.redis.hset(keys.campaign(campaign_id), "rebuilding", time.time())  # it died
        prefix = keys.campaign_prefix(manifest.prefix, tenant, campaign_id) + "/"
        present = set(self.objects.list_keys(prefix))
        found = 0
        pipe = self.redis.pipeline(transaction=False)
        for i in range(manifest.total):
            key = manifest.key(i)
            whole = key in present
            if not whole and key.removesuffix(".png") + "-0.png" in present:
                # Several images per prompt: done only when every one is there.
                spec = self.manifests.specs(manifest, i, i + 1)[0]
                whole = all(k in present for k in keys.image_keys(key, spec.num_images_per_prompt))
            if whole:
                pipe.setbit(keys.present(campaign_id), i, 1)
                found += 1
        pipe.expire(keys.present(campaign_id), self.ttl_s)
        families = self._families(manifest)
        self.records.create_campaign(
            campaign_id,
            tenant,
            total=manifest.total,
            families=families,
            name=manifest.spec.get("name"),
            priority=manifest.priority,
            created_at=manifest.created_at,
            callback_url=manifest.spec.get("callback_url"),
        )
        pipe.hdel(keys.campaign(campaign_id), "rebuilding")
        pipe.execute()
        return found

    def _families(self, manifest: Manifest) -> list[str]:
        if manifest.is_grid:
            return [manifest.grid_spec(0).model]
        seen: dict[str, None] = {}
        for n in range(manifest.chunks):
            for spec in self.manifests.chunk(manifest, n):
                seen[spec.get("model") or "kandinsky-2.2"] = None
        return list(seen) or ["kandinsky-2.2"]
