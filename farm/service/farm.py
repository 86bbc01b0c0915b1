"""The farm as a service: submit, watch, page, cancel, retry, resume and finalize campaigns.

The HTTP API is a thin layer over this class; the Python API is this class itself:

    farm = Farm(Settings.load().with_stack())
    campaign = farm.submit([{"prompt": "a red cat", "seed": 1}, ...])
    records = campaign.wait(progress=True)

S3 is the source of truth: the campaign manifest (spec + expanded jobs with ids and seeds) is
written there before anything is enqueued, and a job is done exactly when its output exists.
Every spec is validated before anything is written or enqueued.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from farm import keys
from farm.service.control import Control
from farm.service.feed import Feeding
from farm.service.handle import Campaign
from farm.service.reconcile import Reconciling
from farm.service.submit import Submitting
from farm.service.views import Views
from farm.settings import Settings
from farm.stores.connect import redis_client
from farm.stores.gather import Gathering
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore


class Farm(Submitting, Feeding, Reconciling, Views, Control):
    """Submits campaigns and reads, cancels, retries and resumes them.

    The verbs live by responsibility in ``submit``, ``views`` and ``control``; this class holds
    the clients they share.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        app=None,
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
        self.manifests: dict = {}  # campaign id -> Manifest, read once per process
        self.chunks: dict = {}  # (campaign id, n) -> an explicit list's manifest chunk

    # -- submit -------------------------------------------------------------------------------

    def submit(self, jobs: Iterable[Any], *, tenant: str = keys.DEFAULT_TENANT) -> Campaign:
        """Submit a list of job specs as one campaign and return a handle on it."""
        sub = self.submit_campaign({"jobs": list(jobs)}, tenant=tenant)
        return self.campaign(sub.campaign_id, tenant=tenant)

    # -- finish -------------------------------------------------------------------------------

    def finalize(self, campaign_id: str) -> dict:
        """Write results.jsonl and contact_sheet.png beside the campaign's images."""
        from farm.finalize import finalize

        return finalize(self.records, self.objects, self.settings.s3_prefix, campaign_id)
