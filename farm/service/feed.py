"""Feeding: campaigns wait in S3; the queues hold what the workers are about to take.

A campaign's jobs are fed to the queues in ranges as its family drains: each family keeps about
``feed_depth`` jobs in flight (fed and not finished; by default twice what its decoders hold,
one message of four renders per decoder process). Which campaign feeds next is a fair choice,
per family:

- across tenants: the tenant with the fewest in-flight jobs for its weight, and a tenant below
  its share (the family's depth over its active tenants) is fed even when the family is full,
  so a newcomer never waits behind another tenant's backlog;
- within a tenant: its highest-priority campaign first (high, normal, low), then the one with
  the fewest jobs in flight (round robin).

Feeding is safe to run in several processes at once (the API after a submission, the feeder
in the stack, a second feeder): a range is claimed by one atomic step on the campaign's cursor,
so no job is fed twice. A claimed range is noted until its messages are out; a feeder that dies
in between leaves the note, and a later pass feeds the range again (its jobs still queued).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from farm import fleet, keys
from farm.domain.batching import RENDERS_PER_MESSAGE
from farm.domain.jobs import JobState
from farm.domain.manifest import JobIds
from farm.errors import ServiceUnavailable
from farm.families import get
from farm.service.enqueue import Enqueuer
from farm.service.manifests import ManifestCache
from farm.settings import Settings
from farm.stores.connect import text
from farm.stores.records import RecordStore

log = logging.getLogger("farm.feeder")

RANK = {"high": 0, "normal": 1, "low": 2}
STALE_FEED_S = 30.0  # a claimed range not published after this long is fed again

# KEYS: campaign, feeding notes. ARGV: most jobs, now. Returns {start, stop} or {-1, -1}.
_CLAIM = """
local c = redis.call('HMGET', KEYS[1], 'fed', 'total', 'cancelled')
if not c[2] or c[3] then return {-1, -1} end
local fed, total = tonumber(c[1] or '0'), tonumber(c[2])
if fed >= total then return {-1, -1} end
local stop = math.min(fed + tonumber(ARGV[1]), total)
redis.call('HSET', KEYS[1], 'fed', stop)
redis.call('HSET', KEYS[2], fed, stop .. ':' .. ARGV[2])
return {fed, stop}
"""


@dataclass
class Feedable:
    campaign_id: str
    tenant: str
    family: str
    priority: str
    created_at: float
    total: int
    fed: int
    inflight: int
    cancelled: bool

    @property
    def open(self) -> bool:
        return not self.cancelled and self.fed < self.total


class Feeding:
    """Feeds the campaigns' jobs to the queues, fairly, as their families drain.

    A fed range is recorded (``records``) and sent (``enqueuer``); its specs are read from the
    manifest (``manifests``). ``app`` sends the finalize task when a range was already done.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        records: RecordStore,
        app: Any,
        manifests: ManifestCache,
        enqueuer: Enqueuer,
    ):
        self.settings = settings
        self.redis = client
        self.records = records
        self.app = app
        self.manifests = manifests
        self.enqueuer = enqueuer
        self._claim = client.register_script(_CLAIM)  # no round trip until its first call

    # -- what is there ------------------------------------------------------------------------

    def feedables(self) -> list[Feedable]:
        """Every campaign the feeder looks after, with its cursor and jobs in flight (one round
        trip); campaigns that ended leave the list."""
        ids = [text(c) for c in self.redis.zrange(keys.FEED_CAMPAIGNS, 0, -1)]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        fields = ("tenant", "family", "priority", "created_at", "total", "fed", "cancelled")
        for cid in ids:
            pipe.hmget(keys.campaign(cid), *fields)
            pipe.hmget(keys.campaign_counts(cid), "queued", "prior", "decoding")
        raw = pipe.execute()
        out, gone = [], []
        for n, cid in enumerate(ids):
            head, counts = raw[2 * n], raw[2 * n + 1]
            tenant, family, prio, created, total, fed, cancelled = (
                None if v is None else text(v) for v in head
            )
            # One HSET writes all three (``RecordStore.create_campaign``): none or all are set.
            if tenant is None or family is None or total is None:
                gone.append(cid)  # expired, or Redis lost it (the feeder rebuilds from S3)
                continue
            size, cursor = int(total), int(fed or 0)
            queued, prior, decoding = (int(v or 0) for v in counts)
            item = Feedable(
                cid,
                tenant,
                family,
                prio or "normal",
                float(created or 0),
                size,
                cursor,
                # Queued counts the jobs not fed yet too.
                max(queued - (size - cursor), 0) + prior + decoding,
                cancelled is not None,
            )
            if not item.open and item.inflight == 0:
                gone.append(cid)
            else:
                out.append(item)
        if gone:
            self.redis.zrem(keys.FEED_CAMPAIGNS, *gone)
        return out

    def queued_jobs(self, tenant: str) -> int:
        """Jobs of the tenant's unfinished campaigns not started yet (fed or not)."""
        ids = [text(c) for c in self.redis.zrange(keys.FEED_CAMPAIGNS, 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for cid in ids:
            pipe.hget(keys.campaign(cid), "tenant")
            pipe.hget(keys.campaign_counts(cid), "queued")
        raw = pipe.execute() if ids else []
        return sum(
            int(raw[2 * n + 1] or 0) for n in range(len(ids)) if raw[2 * n] == tenant.encode()
        )

    def target_depth(self, family: str, workers: list[dict] | None = None) -> int:
        """Jobs a family keeps in flight: the setting, or twice what its decoders can hold (a
        message of ``RENDERS_PER_MESSAGE`` renders each), so none waits for its next message."""
        if self.settings.feed_depth:
            return self.settings.feed_depth
        slots = fleet.render_slots(self.redis, get(family).queue("decoder"), workers)
        return 2 * max(slots, 1) * self.settings.batch_max * RENDERS_PER_MESSAGE

    # -- choose and feed ---------------------------------------------------------------------

    def feed_once(self) -> int:
        """One fair pass: feed every family up to its depth. Returns the jobs fed."""
        try:
            items = self.feedables()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot read the feed list: {e}") from e
        if not any(i.open for i in items):
            return 0  # the common idle pass: one read, nothing more
        weights = self.settings.weights()
        quantum = self.settings.batch_max * RENDERS_PER_MESSAGE
        workers = None if self.settings.feed_depth else fleet.live_workers(self.redis)
        fed = 0
        for family in sorted({i.family for i in items if i.open}):
            mine = [i for i in items if i.family == family]
            target = self.target_depth(family, workers)
            while True:
                inflight = sum(i.inflight for i in mine)
                per_tenant: dict[str, int] = {}
                for i in mine:
                    per_tenant[i.tenant] = per_tenant.get(i.tenant, 0) + i.inflight
                wanting = sorted({i.tenant for i in mine if i.open})
                if not wanting:
                    break
                share = max(target // len(set(per_tenant)), 1)
                # Below its share a tenant is fed even when the family is full.
                able = [t for t in wanting if inflight < target or per_tenant[t] < share]
                if not able:
                    break
                tenant = min(able, key=lambda t: (per_tenant[t] / weights.get(t, 1.0), t))
                pick = min(
                    (i for i in mine if i.tenant == tenant and i.open),
                    key=lambda i: (RANK.get(i.priority, 1), i.inflight, i.created_at),
                )
                room = max(target - inflight, share - per_tenant[tenant], 1)
                if room < self.settings.batch_max and pick.total - pick.fed > room:
                    break  # not a render's worth of room: wait, rather than send crumbs
                # Below its share, its messages go before those of tenants above theirs.
                boosted = per_tenant[tenant] < share and len(per_tenant) > 1
                n = self.feed_range(pick, min(quantum, room), boosted)
                if not n:
                    pick.fed = pick.total  # someone else fed it to the end, or it was cancelled
                    continue
                pick.fed += n
                pick.inflight += n
                fed += n
        return fed

    def feed_range(self, item: Feedable, most: int, boosted: bool = False) -> int:
        """Claim the campaign's next ``most`` jobs and send them; returns how many."""
        start, stop = self._claim(
            keys=[keys.campaign(item.campaign_id), keys.feeding(item.campaign_id)],
            args=[most, time.time()],
        )
        if start < 0:
            return 0
        self._send_range(item.campaign_id, item.tenant, int(start), int(stop), boosted)
        self.redis.hdel(keys.feeding(item.campaign_id), start)
        return int(stop) - int(start)

    def _send_range(
        self, campaign_id: str, tenant: str, start: int, stop: int, boosted: bool = False
    ) -> None:
        """Record and enqueue jobs ``start`` to ``stop - 1`` (again, after a crash: the jobs
        that moved on are left alone)."""
        manifest = self.manifests.manifest(campaign_id, tenant)
        specs = self.manifests.specs(manifest, start, stop)
        pairs = [
            (manifest.job_id(i), spec) for i, spec in zip(range(start, stop), specs, strict=True)
        ]
        self.records.add_fed(campaign_id, tenant, manifest.prefix, pairs)
        present = self._present(campaign_id, start, stop)
        found = [(j, s) for n, (j, s) in enumerate(pairs) if present[n]]
        if found:
            # Rebuilt after Redis was lost, and the image is in S3: done, not rendered again.
            moved = self.records.moves(
                campaign_id,
                [
                    (j, {"s3_key": manifest.key(start + n)})
                    for n, (j, _) in enumerate(pairs)
                    if present[n]
                ],
                JobState.DONE,
                (JobState.QUEUED,),
            )
            if any(done for _, _, done in moved):
                self.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
        todo = [(j, s) for n, (j, s) in enumerate(pairs) if not present[n]]
        states = self.records.states([j for j, _ in todo])
        todo = [p for p, state in zip(todo, states, strict=True) if state == JobState.QUEUED]
        ids = JobIds(campaign_id, manifest.total)
        self.enqueuer.schedule(campaign_id, tenant, todo, ids, manifest.priority, boosted)
        if self.redis.hexists(keys.campaign(campaign_id), "cancelled"):
            # Cancelled while this range went out: its jobs never run.
            self.records.move_many(
                campaign_id, [j for j, _ in todo], JobState.CANCELLED, (JobState.QUEUED,)
            )

    def _present(self, campaign_id: str, start: int, stop: int) -> list[bool]:
        if not self.redis.exists(keys.present(campaign_id)):
            return [False] * (stop - start)  # never rebuilt: nothing was found in S3
        pipe = self.redis.pipeline(transaction=False)
        for i in range(start, stop):
            pipe.getbit(keys.present(campaign_id), i)
        return [bool(b) for b in pipe.execute()]

    # -- repair --------------------------------------------------------------------------------

    def refeed_stale(self, older_than_s: float = STALE_FEED_S) -> int:
        """Ranges claimed by a feeder that died before their messages went out: send them."""
        now, count = time.time(), 0
        for item in self.feedables():
            notes = self.redis.hgetall(keys.feeding(item.campaign_id))
            for start, value in notes.items():
                stop, at = text(value).split(":")
                if now - float(at) < older_than_s:
                    continue
                log.warning("feeding %s jobs %s-%s again", item.campaign_id, int(start), stop)
                self._send_range(item.campaign_id, item.tenant, int(start), int(stop))
                self.redis.hdel(keys.feeding(item.campaign_id), start)
                count += int(stop) - int(start)
        return count

    def publish_backlog(self) -> dict[str, int]:
        """Each first-stage queue's backlog (jobs not fed yet, plus messages queued), in
        messages, as the length of a list KEDA's redis scaler reads; also returned."""
        items = self.feedables()
        quantum = self.settings.batch_max * RENDERS_PER_MESSAGE
        unfed: dict[str, int] = {}
        for i in items:
            if i.open:
                queue = get(i.family).queue("prior" if get(i.family).two_stage else "decoder")
                unfed[queue] = unfed.get(queue, 0) + i.total - i.fed
        names = fleet.all_queues(self.settings.enabled_families)
        depths = fleet.depths(self.redis, names)
        out = {
            name: min(depth + -(-unfed.get(name, 0) // quantum), 10_000)
            for name, depth in zip(names, depths, strict=True)
        }
        pipe = self.redis.pipeline(transaction=False)
        for queue in names:
            pipe.llen(keys.backlog_list(queue))
        lengths = pipe.execute()
        pipe = self.redis.pipeline(transaction=True)
        for queue, now in zip(names, lengths, strict=True):
            # Only the difference moves: a steady backlog costs one LLEN per queue.
            want, key = out[queue], keys.backlog_list(queue)
            if want > now:
                pipe.rpush(key, *([1] * (want - now)))
            elif want == 0 and now:
                pipe.delete(key)
            elif want < now:
                pipe.ltrim(key, 0, want - 1)
        pipe.execute()
        return out
