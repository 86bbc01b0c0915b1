"""Enqueueing: recorded jobs as broker messages (batched), chained jobs held for their parents."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from farm import fleet, keys
from farm.chains import release
from farm.domain.batching import RENDERS_PER_MESSAGE, batches
from farm.domain.jobs import JobSpec, new_id
from farm.domain.manifest import JobIds
from farm.errors import ServiceUnavailable
from farm.families import get
from farm.stores.gather import Gathering, offer_for
from farm.stores.records import RecordStore

Pairs = list[tuple[str, JobSpec]]  # (job id, spec)


def repr_jobs(campaign_id: str, jobs: list[dict]) -> str:
    """What Flower shows of a message: ids only (specs can be long and prompts private)."""
    return repr({"campaign_id": campaign_id, "jobs": [j["job_id"] for j in jobs]})


class Enqueuer:
    """Sends jobs whose records exist to their first stage's queue.

    Args:
        prefix: the S3 prefix images and inputs live under (``settings.s3_prefix``).
        ttl_s: how long a held chained job's message is kept (``settings.record_ttl_s``).
        batch_max: renders a decoder process makes at once (``settings.batch_max``).
    """

    def __init__(
        self,
        client: redis.Redis,
        records: RecordStore,
        app: Any,
        gathering: Gathering,
        *,
        prefix: str,
        ttl_s: int,
        batch_max: int,
    ):
        self.redis = client
        self.records = records
        self.app = app
        self.gathering = gathering
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.batch_max = batch_max

    def schedule(
        self,
        campaign_id: str,
        tenant: str,
        jobs: Pairs,
        ids: Sequence[str],
        priority: str = "normal",
        boosted: bool = False,
    ) -> None:
        """Enqueue the jobs that can run now; hold chained jobs until the jobs they read are done.
        ``boosted``: the tenant was below its fair share when these were fed (``fleet.level``)."""
        level = fleet.level(priority, boosted)
        ready: Pairs = []
        held: Pairs = []
        for job_id, spec in jobs:
            (held if spec.parent_indexes() else ready).append((job_id, spec))
        self._enqueue(campaign_id, tenant, ready, ids, level)
        if not held:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id, spec in held:
            parents = [ids[n] for n in spec.parent_indexes()]
            message = {
                "task": fleet.first_task(spec.model),
                "kwargs": {
                    "campaign_id": campaign_id,
                    "jobs": [self._message(job_id, campaign_id, tenant, spec, ids, level)],
                },
                "parents": parents,
            }
            pipe.set(keys.pending(job_id), json.dumps(message), ex=self.ttl_s)
            for parent in parents:
                pipe.sadd(keys.children(parent), job_id)
                pipe.expire(keys.children(parent), self.ttl_s)
        pipe.execute()
        # A parent may have finished before its child was registered: look once more.
        for job_id, _ in held:
            release(self.redis, self.records, self.app, job_id)

    def send_again(self, campaign_id: str, tenant: str, job_ids: list[str]) -> list[str]:
        """Enqueue recorded jobs again (their campaign's priority); returns the ids sent."""
        recs = [r for r in self.records.get_many(job_ids) if r is not None]
        info = self.records.campaign(campaign_id) or {}
        self.schedule(
            campaign_id,
            tenant,
            [(r.job_id, r.spec) for r in recs],
            JobIds(campaign_id, int(info.get("total") or 0)),
            info.get("priority") or "normal",
        )
        return [r.job_id for r in recs]

    def _message(
        self,
        job_id: str,
        campaign_id: str,
        tenant: str,
        spec: JobSpec,
        ids: Sequence[str],
        priority: int = fleet.NORMAL,
    ) -> dict[str, Any]:
        """One job of a message: its id, spec, where its image goes and where its inputs are
        (and its broker priority, which the prior gives the decoder message it sends)."""
        inputs = {ref: keys.input_object(self.prefix, tenant, ref) for ref in spec.input_refs()}
        parents = spec.parent_indexes()
        for n, rec in zip(parents, self.records.get_many([ids[n] for n in parents]), strict=True):
            # A chained job reads the first image of the job it names.
            if rec is None:
                raise LookupError(f"job {job_id} reads job {ids[n]}, which has no record")
            inputs[f"job:{n}"] = rec.s3_keys[0]
        job: dict[str, Any] = {
            "job_id": job_id,
            "spec": spec.to_dict(),
            "key": keys.image_object(self.prefix, tenant, campaign_id, job_id),
            "inputs": inputs,
        }
        if priority != fleet.NORMAL:
            job["priority"] = priority
        return job

    def _batches(self, pairs: Pairs) -> list[Pairs]:
        """Compatible jobs in messages of up to RENDERS_PER_MESSAGE renders, as many messages as
        keep every decoder process of the family busy (each renders ``batch_max`` at a time)."""
        out: list[Pairs] = []
        for model in dict.fromkeys(spec.model for _, spec in pairs):
            mine = [(j, s) for j, s in pairs if s.model == model]
            try:
                slots = fleet.render_slots(self.redis, get(model).queue("decoder"))
            except redis.RedisError:
                slots = 1
            most = self.batch_max * RENDERS_PER_MESSAGE
            out += batches(mine, most, max(slots, 1))
        return out

    def _enqueue(
        self,
        campaign_id: str,
        tenant: str,
        pairs: Pairs,
        ids: Sequence[str],
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
                messages: list[tuple[str, str, dict[str, Any]]] = []
                offers = []
                for group in groups:
                    spec, message_id = group[0][1], new_id()
                    jobs = [
                        self._message(j, campaign_id, tenant, s, ids, priority) for j, s in group
                    ]
                    payload: dict[str, Any] = {"campaign_id": campaign_id, "jobs": jobs}
                    task = fleet.first_task(spec.model)
                    if task == keys.DECODER_TASK:  # single stage: offered to other decoders
                        queue = get(spec.model).queue("decoder")
                        offers.append(offer_for(queue, spec, message_id, payload, self.batch_max))
                    messages.append((task, message_id, payload))
                self.gathering.offer([o for o in offers if o])
                with producer.batch(max_size=1000):
                    for task, message_id, payload in messages:
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
                            kwargsrepr=repr_jobs(campaign_id, payload["jobs"]),
                        )
        except (redis.RedisError, OSError) as e:
            raise ServiceUnavailable(f"broker: cannot enqueue: {e}") from e
