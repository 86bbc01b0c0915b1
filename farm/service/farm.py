"""The farm as a service: submit, watch, page, cancel, retry, resume and finalize campaigns.

The HTTP API is a thin layer over this class; the Python API is this class itself:

    farm = Farm(Settings.load().with_stack())
    campaign = farm.submit([{"prompt": "a red cat", "seed": 1}, ...])
    records = campaign.wait(progress=True)

S3 is the source of truth: the campaign manifest (spec + expanded jobs with ids and seeds) is
written there before anything is enqueued, and a job is done exactly when its output exists.
Every spec is validated before anything is written or enqueued.

``Farm`` builds one object per concern, each given only what it uses, and hands each verb to
its owner: ``submission`` (submit.py), ``feeding`` (feed.py), ``reconciler`` (reconcile.py),
``views`` (views.py), ``control`` (control.py); beneath them ``enqueuer`` (enqueue.py),
``rebuilder`` (rebuild.py) and ``manifests`` (manifests.py), the one cache they share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import redis

from farm import keys
from farm.domain.campaigns import CampaignSpec
from farm.domain.jobs import JobState
from farm.domain.manifest import Manifest
from farm.service.control import Control
from farm.service.enqueue import Enqueuer
from farm.service.feed import STALE_FEED_S, Feedable, Feeding
from farm.service.handle import Campaign
from farm.service.manifests import ManifestCache
from farm.service.rebuild import Rebuilder
from farm.service.reconcile import RECHECK_S, Reconciler
from farm.service.submit import Submission, Submitted
from farm.service.views import Views
from farm.settings import Settings
from farm.stores.connect import redis_client
from farm.stores.gather import Gathering
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore
from farm.stores.unacked import CONFIRM_S


class Farm:
    """Submits campaigns and reads, cancels, retries and resumes them.

    Holds the shared clients (``settings``, ``redis``, ``records``, ``objects``, ``app``,
    ``gathering``) and the concern objects built from them; each method below is its owner's.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        app: Any = None,
        objects: ObjectStore | None = None,
    ):
        settings.require_endpoints()
        self.settings = settings
        self.redis = client or redis_client(settings, health_check_interval=30)
        self.records = RecordStore(self.redis, settings.record_ttl_s)
        self.objects = objects or ObjectStore.from_settings(settings)
        if app is None:
            from workers.app import create_app

            app = create_app(settings)
        self.app = app
        self.gathering = Gathering(self.redis, settings.embedding_ttl_s)

        prefix, ttl_s = settings.s3_prefix, settings.record_ttl_s
        self.manifests = ManifestCache(self.objects, prefix)
        self.enqueuer = Enqueuer(
            self.redis,
            self.records,
            self.app,
            self.gathering,
            prefix=prefix,
            ttl_s=ttl_s,
            batch_max=settings.batch_max,
        )
        self.feeding = Feeding(
            settings, self.redis, self.records, self.app, self.manifests, self.enqueuer
        )
        self.rebuilder = Rebuilder(
            self.redis, self.records, self.objects, self.manifests, prefix=prefix, ttl_s=ttl_s
        )
        self.reconciler = Reconciler(
            self.redis, self.records, self.enqueuer, families=settings.enabled_families
        )
        self.views = Views(settings, self.redis, self.records, self.objects, self.manifests)
        self.submission = Submission(
            settings, self.redis, self.records, self.objects, self.manifests, self.feeding
        )
        self.control = Control(
            self.redis,
            self.records,
            self.objects,
            self.app,
            self.views,
            self.enqueuer,
            self.feeding,
            self.rebuilder,
            self.reconciler,
            prefix=prefix,
        )

    # -- submit: Submission -------------------------------------------------------------------

    def submit(self, jobs: Iterable[Any], *, tenant: str = keys.DEFAULT_TENANT) -> Campaign:
        """Submit a list of job specs as one campaign and return a handle on it."""
        sub = self.submission.submit_campaign({"jobs": list(jobs)}, tenant=tenant)
        return self.views.campaign(sub.campaign_id, tenant=tenant)

    def submit_campaign(
        self,
        spec: CampaignSpec | dict,
        *,
        tenant: str = keys.DEFAULT_TENANT,
        idempotency_key: str | None = None,
    ) -> Submitted:
        return self.submission.submit_campaign(spec, tenant=tenant, idempotency_key=idempotency_key)

    def upload_input(self, data: bytes, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        return self.submission.upload_input(data, tenant=tenant)

    # -- feed: Feeding, Rebuilder -------------------------------------------------------------

    def feed_once(self) -> int:
        return self.feeding.feed_once()

    def feedables(self) -> list[Feedable]:
        return self.feeding.feedables()

    def feed_range(self, item: Feedable, most: int, boosted: bool = False) -> int:
        return self.feeding.feed_range(item, most, boosted)

    def queued_jobs(self, tenant: str) -> int:
        return self.feeding.queued_jobs(tenant)

    def target_depth(self, family: str, workers: list[dict] | None = None) -> int:
        return self.feeding.target_depth(family, workers)

    def refeed_stale(self, older_than_s: float = STALE_FEED_S) -> int:
        return self.feeding.refeed_stale(older_than_s)

    def publish_backlog(self) -> dict[str, int]:
        return self.feeding.publish_backlog()

    def manifest(self, campaign_id: str, tenant: str) -> Manifest:
        return self.manifests.manifest(campaign_id, tenant)

    def recover(self) -> list[str]:
        return self.rebuilder.recover()

    def rebuild(self, campaign_id: str, tenant: str) -> int:
        return self.rebuilder.rebuild(campaign_id, tenant)

    # -- reconcile: Reconciler ----------------------------------------------------------------

    def covered(self) -> tuple[set[str], dict[str, set[str]]]:
        return self.reconciler.covered()

    def give_back(self, confirm_s: float = CONFIRM_S) -> list[str]:
        return self.reconciler.give_back(confirm_s)

    def reconcile(
        self, grace_s: float = 60.0, *, campaign_id: str | None = None, recheck_s: float = RECHECK_S
    ) -> list[str]:
        return self.reconciler.reconcile(grace_s, campaign_id=campaign_id, recheck_s=recheck_s)

    # -- read: Views --------------------------------------------------------------------------

    def campaign(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> Campaign:
        return self.views.campaign(campaign_id, tenant=tenant)

    def status(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        return self.views.status(campaign_id, tenant=tenant)

    def list_campaigns(self, *, tenant: str = keys.DEFAULT_TENANT, limit: int = 100) -> list[dict]:
        return self.views.list_campaigns(tenant=tenant, limit=limit)

    def usage(self, *, tenant: str = keys.DEFAULT_TENANT, limit: int = 10_000) -> dict:
        return self.views.usage(tenant=tenant, limit=limit)

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
        return self.views.jobs_page(
            campaign_id, tenant=tenant, state=state, cursor=cursor, limit=limit, presign_s=presign_s
        )

    def iter_jobs(
        self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT, state: JobState | None = None
    ) -> Iterator[dict]:
        return self.views.iter_jobs(campaign_id, tenant=tenant, state=state)

    def iter_manifest(
        self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT
    ) -> Iterator[dict]:
        return self.views.iter_manifest(campaign_id, tenant=tenant)

    def fleet(self) -> dict:
        return self.views.fleet()

    # -- control: Control ---------------------------------------------------------------------

    def cancel(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        return self.control.cancel(campaign_id, tenant=tenant)

    def retry_failed(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> int:
        return self.control.retry_failed(campaign_id, tenant=tenant)

    def resume(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        return self.control.resume(campaign_id, tenant=tenant)

    # -- finish -------------------------------------------------------------------------------

    def finalize(self, campaign_id: str) -> dict:
        """Write results.jsonl and contact_sheet.png beside the campaign's images."""
        from farm.finalize import finalize

        return finalize(self.records, self.objects, self.settings.s3_prefix, campaign_id)
