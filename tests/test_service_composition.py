"""``Farm`` is composed, not mixed in: one object per concern, each built from what it uses.

The wiring checks need no server; the last tests use a concern alone over a real Redis (the
session's Valkey, a database of their own) and an in-memory object store.
"""

from __future__ import annotations

import inspect
import json
import time
import typing

import pytest
import redis

from farm import keys
from farm.domain.jobs import JobState
from farm.domain.manifest import Manifest
from farm.errors import NotFound
from farm.service import Farm
from farm.service.control import Control
from farm.service.enqueue import Enqueuer
from farm.service.feed import Feeding
from farm.service.manifests import ManifestCache
from farm.service.rebuild import Rebuilder
from farm.service.reconcile import Reconciler
from farm.service.submit import Submission
from farm.service.views import Views
from farm.settings import Settings
from farm.stores.records import RecordStore

# The concern objects and the attribute ``Farm`` keeps each under.
CONCERNS = {
    "submission": Submission,
    "feeding": Feeding,
    "reconciler": Reconciler,
    "views": Views,
    "control": Control,
    "enqueuer": Enqueuer,
    "rebuilder": Rebuilder,
    "manifests": ManifestCache,
}
# The verbs each concern offers through ``Farm`` (the API, the CLI, the feeder and tests call).
VERBS = {
    Submission: ["submit_campaign", "upload_input"],
    Feeding: [
        "feed_once",
        "feedables",
        "feed_range",
        "queued_jobs",
        "target_depth",
        "refeed_stale",
        "publish_backlog",
    ],
    Rebuilder: ["recover", "rebuild"],
    ManifestCache: ["manifest"],
    Reconciler: ["covered", "give_back", "reconcile"],
    Views: [
        "campaign",
        "status",
        "list_campaigns",
        "usage",
        "jobs_page",
        "iter_jobs",
        "iter_manifest",
        "fleet",
    ],
    Control: ["cancel", "retry_failed", "resume"],
}
PREFIX = "renders"


class FakeObjects:
    """An in-memory object store: the calls the service makes, and how many reads."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.reads = 0

    def put(self, key, data, content_type, metadata=None):
        self.data[key] = data

    def get(self, key):
        self.reads += 1
        if key not in self.data:
            raise NotFound(f"no object {key}")
        return self.data[key]

    def head(self, key):
        return {} if key in self.data else None

    def list_keys(self, prefix):
        return {k for k in self.data if k.startswith(prefix)}

    def presigned_url(self, key, expires_s=900):
        return f"memory://{key}"


def _settings(redis_url: str = "redis://127.0.0.1:1/0") -> Settings:
    return Settings.load(redis_url=redis_url, s3_endpoint="http://127.0.0.1:1", s3_prefix=PREFIX)


def _offline_farm() -> Farm:
    """A Farm over a client that never connects (building one makes no round trip)."""
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    return Farm(_settings(), client=client, app=object(), objects=FakeObjects())  # type: ignore[arg-type]


def test_farm_is_no_mixin_and_delegates_explicitly():
    assert Farm.__bases__ == (object,)
    assert Farm.__mro__ == (Farm, object)
    assert "__getattr__" not in vars(Farm)
    for cls in CONCERNS.values():
        assert cls.__bases__ == (object,), f"{cls.__name__} inherits {cls.__bases__}"


@pytest.mark.parametrize("cls", list(CONCERNS.values()), ids=lambda c: c.__name__)
def test_each_concern_is_built_from_its_collaborators_and_never_from_a_farm(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert params, f"{cls.__name__} takes nothing: it would reach for what it uses"
    hints = typing.get_type_hints(cls.__init__)
    for p in params:
        assert p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD), f"{cls.__name__}(*{p.name})"
        assert p.name in hints, f"{cls.__name__}({p.name}) has no annotation"
        assert hints[p.name] is not Farm, f"{cls.__name__}({p.name}: Farm)"
        assert "farm" not in p.name.lower(), f"{cls.__name__}({p.name})"


def test_farm_holds_one_of_each_concern_sharing_its_stores():
    farm = _offline_farm()
    for name, cls in CONCERNS.items():
        assert type(getattr(farm, name)) is cls
    for name in CONCERNS:
        held = vars(getattr(farm, name)).values()
        assert not any(isinstance(v, Farm) for v in held), f"farm.{name} holds the Farm"
    # One records store, one manifest cache: what one concern caches, the others see.
    for name in ("submission", "feeding", "reconciler", "views", "control", "enqueuer"):
        assert getattr(farm, name).records is farm.records
    for name in ("submission", "feeding", "views", "rebuilder"):
        assert getattr(farm, name).manifests is farm.manifests
    assert farm.control.views is farm.views and farm.submission.feeding is farm.feeding
    assert farm.feeding.enqueuer is farm.reconciler.enqueuer is farm.control.enqueuer


def test_each_verb_on_farm_has_its_owners_signature():
    for cls, verbs in VERBS.items():
        for verb in verbs:
            ours = inspect.signature(getattr(Farm, verb))
            theirs = inspect.signature(getattr(cls, verb))
            assert ours.parameters == theirs.parameters, f"Farm.{verb} vs {cls.__name__}.{verb}"


def test_the_manifest_cache_reads_each_header_once():
    objects = FakeObjects()
    manifest = _manifest("c" * 32, total=3)
    objects.put(keys.manifest_object(PREFIX, "alice", manifest.campaign_id), _header(manifest), "")
    cache = ManifestCache(objects, PREFIX)
    assert cache.manifest(manifest.campaign_id, "alice").total == 3
    assert cache.manifest(manifest.campaign_id, "alice").total == 3
    assert objects.reads == 1
    cache.forget(manifest.campaign_id)
    cache.manifest(manifest.campaign_id, "alice")
    assert objects.reads == 2


@pytest.fixture
def own_redis(valkey):
    """A database of the session's Valkey no stack process reads (a feeder would feed what is
    recorded here), flushed before and after."""
    url = valkey.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


def test_views_alone_reads_a_campaign_from_its_records_and_manifest(own_redis):
    """Views built by hand (no Farm): status, a page of unfed jobs from the manifest, a handle."""
    url, client = own_redis
    records = RecordStore(client, 3600)
    objects = FakeObjects()
    manifest = _manifest("d" * 32, total=3)
    cid = manifest.campaign_id
    objects.put(keys.manifest_object(PREFIX, "alice", cid), _header(manifest), "")
    records.create_campaign(cid, "alice", total=3, families=["kandinsky-2.2"], name="walk")
    views = Views(_settings(url), client, records, objects, ManifestCache(objects, PREFIX))

    status = views.status(cid, tenant="alice")
    assert (status["name"], status["total"], status["counts"]["queued"]) == ("walk", 3, 3)
    # Nobody serves the family in this database: waiting, with the reason.
    assert status["state"] == "waiting" and "decoder.kandinsky-2.2" in status["waiting_reason"]
    jobs, cursor = views.jobs_page(cid, tenant="alice", limit=2)
    assert [j["job_id"] for j in jobs] == [f"{cid}-0", f"{cid}-1"] and cursor
    assert jobs[0]["state"] == JobState.QUEUED.value and jobs[0]["seed"] == 7
    rest, cursor = views.jobs_page(cid, tenant="alice", cursor=cursor)
    assert [j["job_id"] for j in rest] == [f"{cid}-2"] and cursor is None
    handle = views.campaign(cid, tenant="alice")
    assert list(handle.job_ids) == [f"{cid}-{i}" for i in range(3)]
    assert handle.status()["id"] == cid and handle.records() == []  # none fed yet
    with pytest.raises(NotFound):
        views.status(cid, tenant="bob")  # another tenant's campaign is a missing one


def _manifest(campaign_id: str, total: int) -> Manifest:
    """A grid of one prompt and ``total`` seeds (7, 8, ...)."""
    seeds = [7 + n for n in range(total)]
    return Manifest(
        campaign_id=campaign_id,
        tenant="alice",
        prefix=PREFIX,
        total=total,
        spec={"grid": {"prompts": ["a red cat"], "seeds": seeds}, "defaults": {}},
        created_at=time.time(),
        seeds=seeds,
    )


def _header(manifest: Manifest) -> bytes:
    return json.dumps(manifest.header()).encode()
