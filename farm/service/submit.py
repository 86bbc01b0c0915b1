"""Submission: validate everything, write the manifest, record the jobs, enqueue in batches."""

from __future__ import annotations

import hashlib
import json
import time

import redis
from pydantic import BaseModel

from farm import fleet, keys
from farm.chains import release
from farm.domain.batching import RENDERS_PER_MESSAGE, batches
from farm.domain.campaigns import CampaignSpec, plan_grid
from farm.domain.jobs import JobSpec, new_id
from farm.domain.manifest import CHUNK, Manifest, chunked
from farm.domain.validation import check_enabled, check_inputs
from farm.errors import Conflict, QuotaExceeded, ServiceUnavailable
from farm.families import get
from farm.stores.gather import offer_for


def repr_jobs(campaign_id: str, jobs: list[dict]) -> str:
    """What Flower shows of a message: ids only (specs can be long and prompts private)."""
    return repr({"campaign_id": campaign_id, "jobs": [j["job_id"] for j in jobs]})


class Submitted(BaseModel):
    """What a submission returns (the API's response body too)."""

    campaign_id: str
    job_count: int
    created: bool  # False when an Idempotency-Key matched an earlier campaign


class Submitting:
    """Farm's submission verbs (mixed into ``Farm``)."""

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
                    earlier_id, earlier_body = self.redis.get(ikey).decode().split(":", 1)
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
        self.feed_once()
        return Submitted(campaign_id=campaign_id, job_count=total, created=True)

    def _check_quota(self, tenant: str, total: int) -> None:
        """A tenant may have at most ``tenant_max_queued`` jobs waiting, this campaign's too."""
        limit = self.settings.tenant_max_queued
        try:
            waiting = self.queued_jobs(tenant)
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: {e}") from e
        if waiting + total > limit:
            raise QuotaExceeded(
                f"tenant {tenant!r} would have {waiting + total} jobs queued; at most {limit} "
                f"(FARM_TENANT_MAX_QUEUED): wait for some to finish, or cancel a campaign"
            )

    def _input_meta(self, tenant: str):
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
        if explicit:
            for n, chunk in enumerate(chunked(specs)):
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
        self.manifests[campaign_id] = manifest
        for n, chunk in enumerate(chunked(specs) if explicit else ()):
            self.chunks[(campaign_id, n)] = chunk
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

    def _message(
        self,
        job_id: str,
        campaign_id: str,
        tenant: str,
        spec: JobSpec,
        ids: list[str] | None = None,
        priority: int = fleet.NORMAL,
    ) -> dict:
        """One job of a message: its id, spec, where its image goes and where its inputs are
        (and its broker priority, which the prior gives the decoder message it sends)."""
        prefix = self.settings.s3_prefix
        inputs = {ref: keys.input_object(prefix, tenant, ref) for ref in spec.input_refs()}
        parents = spec.parent_indexes()
        for n, rec in zip(parents, self.records.get_many([ids[n] for n in parents]), strict=True):
            # A chained job reads the first image of the job it names.
            inputs[f"job:{n}"] = rec.s3_keys[0]
        job = {
            "job_id": job_id,
            "spec": spec.to_dict(),
            "key": keys.image_object(prefix, tenant, campaign_id, job_id),
            "inputs": inputs,
        }
        if priority != fleet.NORMAL:
            job["priority"] = priority
        return job

    def _schedule(
        self,
        campaign_id: str,
        tenant: str,
        jobs: list[tuple[str, JobSpec]],
        ids: list[str],
        priority: str = "normal",
        boosted: bool = False,
    ) -> None:
        """Enqueue the jobs that can run now; hold chained jobs until the jobs they read are done.
        ``boosted``: the tenant was below its fair share when these were fed (``fleet.level``)."""
        priority = fleet.level(priority, boosted)
        ready, held = [], []
        for job_id, spec in jobs:
            (held if spec.parent_indexes() else ready).append((job_id, spec))
        self._enqueue(campaign_id, tenant, ready, ids, priority)
        if not held:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id, spec in held:
            parents = [ids[n] for n in spec.parent_indexes()]
            message = {
                "task": fleet.first_task(spec.model),
                "kwargs": {
                    "campaign_id": campaign_id,
                    "jobs": [self._message(job_id, campaign_id, tenant, spec, ids, priority)],
                },
                "parents": parents,
            }
            pipe.set(keys.pending(job_id), json.dumps(message), ex=self.settings.record_ttl_s)
            for parent in parents:
                pipe.sadd(keys.children(parent), job_id)
                pipe.expire(keys.children(parent), self.settings.record_ttl_s)
        pipe.execute()
        # A parent may have finished before its child was registered: look once more.
        for job_id, _ in held:
            release(self.redis, self.records, self.app, job_id)

    def _batches(self, pairs: list[tuple[str, JobSpec]]) -> list[list[tuple[str, JobSpec]]]:
        """Compatible jobs in messages of up to RENDERS_PER_MESSAGE renders, as many messages as
        keep every decoder process of the family busy (each renders ``batch_max`` at a time)."""
        out = []
        for model in dict.fromkeys(spec.model for _, spec in pairs):
            mine = [(j, s) for j, s in pairs if s.model == model]
            try:
                slots = fleet.render_slots(self.redis, get(model).queue("decoder"))
            except redis.RedisError:
                slots = 1
            most = self.settings.batch_max * RENDERS_PER_MESSAGE
            out += batches(mine, most, max(slots, 1))
        return out

    def _enqueue(
        self,
        campaign_id: str,
        tenant: str,
        pairs: list[tuple[str, JobSpec]],
        ids: list[str],
        priority: int = fleet.NORMAL,
    ) -> None:
        """Publish the jobs as messages of up to ``batch_max`` compatible jobs each (one pipeline
        call renders a message's jobs together), pipelined: one Redis round trip per 1,000."""
        try:
            with self.app.producer_or_acquire() as producer:
                groups = self._batches(pairs)
                # Declared on every submission, not once per connection: after a Redis restart
                # without data the routing tables are gone and messages would be dropped. Only
                # the queues this submission uses: each declare is a round trip.
                used = {
                    fleet.job_queue(fleet.first_task(g[0][1].model), g[0][1].model) for g in groups
                }
                for name in sorted(used):
                    self.app.amqp.queues[name].bind(producer.channel).declare()
                messages, offers = [], []
                for group in groups:
                    spec, message_id = group[0][1], new_id()
                    jobs = [
                        self._message(j, campaign_id, tenant, s, ids, priority) for j, s in group
                    ]
                    payload = {"campaign_id": campaign_id, "jobs": jobs}
                    task = fleet.first_task(spec.model)
                    if task == keys.DECODER_TASK:  # single stage: offered to other decoders
                        queue = get(spec.model).queue("decoder")
                        offers.append(
                            offer_for(queue, spec, message_id, payload, self.settings.batch_max)
                        )
                    messages.append((task, message_id, payload))
                self.gathering.offer([o for o in offers if o])
                with producer.batch(max_size=1000):
                    for task, message_id, payload in messages:
                        jobs = payload["jobs"]
                        self.app.send_task(
                            task,
                            kwargs=payload,
                            task_id=message_id,
                            priority=priority,
                            producer=producer,
                            declare=[],  # declared above, once; per message it is a round trip
                            # The job records are the results; a result subscription per
                            # message would be another Redis command each.
                            ignore_result=True,
                            kwargsrepr=repr_jobs(campaign_id, jobs),
                        )
        except (redis.RedisError, OSError) as e:
            raise ServiceUnavailable(f"broker: cannot enqueue: {e}") from e

    # -- read ---------------------------------------------------------------------------------
