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

import base64
import hashlib
import io
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from farm import capabilities, keys
from farm.campaigns import CampaignSpec
from farm.errors import Conflict, InvalidJob, JobFailed, NotFound, ServiceUnavailable
from farm.jobs import JobRecord, JobSpec, JobState, new_id
from farm.progress import wait_for_campaign
from farm.records import ACTIVE, RecordStore
from farm.settings import Settings
from farm.storage import ObjectStore

SHEET_MAX = 64  # images on a campaign's contact sheet
SHEET_THUMB = 128


@dataclass(frozen=True)
class Submitted:
    campaign_id: str
    job_count: int
    created: bool  # False when an Idempotency-Key matched an earlier campaign


class Farm:
    """Submits campaigns and reads, cancels, retries and resumes them."""

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
        self.redis = client or redis.Redis.from_url(settings.redis_url, health_check_interval=30)
        self.records = RecordStore(self.redis, settings.record_ttl_s)
        self.objects = objects or ObjectStore.from_settings(settings)
        if app is None:
            from workers.app import create_app

            app = create_app(settings)
            # One "task-sent" event per job is a Redis PUBLISH outside the publish pipeline: it
            # halves bulk submission speed. Flower still sees each task from the workers' events.
            app.conf.task_send_sent_event = False
        self.app = app

    # -- submit -------------------------------------------------------------------------------

    def submit(self, jobs: Iterable[Any], *, tenant: str = keys.DEFAULT_TENANT) -> Campaign:
        """Submit a list of job specs as one campaign and return a handle on it."""
        sub = self.submit_campaign({"jobs": list(jobs)}, tenant=tenant)
        return self.campaign(sub.campaign_id, tenant=tenant)

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
        specs = campaign.expand()
        self._check_inputs(specs, tenant)
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
                    return Submitted(earlier_id, int(info["total"]) if info else len(specs), False)
            except redis.RedisError as e:
                raise ServiceUnavailable(f"redis: {e}") from e
        try:
            self._create(campaign_id, tenant, campaign, specs)
        except BaseException:
            if idempotency_key:
                self.redis.delete(keys.idempotency(tenant, idempotency_key))
            raise
        return Submitted(campaign_id, len(specs), True)

    def upload_input(self, data: bytes, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        """Store an input image (checked first); returns its reference for job specs."""
        from farm.inputs import array_to_png, check_image

        if data.startswith(b"\x93NUMPY"):
            # A mask as an array (the guides build masks with NumPy): stored as its PNG.
            data = array_to_png(data)
        img = check_image(data)
        key = keys.input_object(self.settings.s3_prefix, tenant, img.ref)
        if self.objects.head(key) is None:
            meta = {"width": str(img.width), "height": str(img.height), "format": img.format}
            self.objects.put(key, data, f"image/{img.format.lower()}", metadata=meta)
        return {"input": img.ref, "width": img.width, "height": img.height, "format": img.format}

    def _check_inputs(self, specs: list[JobSpec], tenant: str) -> None:
        """Uploads exist (for this tenant) and a mask matches its image; a chained job reads an
        earlier job of the same campaign (so there can be no cycle)."""
        seen: dict[str, dict | None] = {}

        def meta(ref: str) -> dict | None:
            if ref not in seen:
                key = keys.input_object(self.settings.s3_prefix, tenant, ref)
                seen[ref] = self.objects.head(key)
            return seen[ref]

        for index, spec in enumerate(specs):
            fields = [("image", spec.image), ("mask", spec.mask), ("hint", spec.hint)]
            fields += [
                (f"interpolate.{n}.image", i.image) for n, i in enumerate(spec.interpolate or ())
            ]
            for field, ref in fields:
                if not ref:
                    continue
                if ref.startswith("job:"):
                    if int(ref[4:]) >= index:
                        raise InvalidJob(
                            field,
                            f"{ref} must name an earlier job of this campaign (< {index})",
                            index=index,
                        )
                elif meta(ref) is None:
                    raise InvalidJob(
                        field,
                        f"unknown input {ref}; upload it first (POST /v1/inputs)",
                        index=index,
                    )
            single_stage_i2i = (
                spec.task == "img2img" and not capabilities.MODELS[spec.model].two_stage
            )
            # Kandinsky 3 and SD img2img render at the input's size (they take no height or
            # width); a ControlNet hint must be the output's size. Say so now, not mid-job.
            sized = [("image", spec.image)] if single_stage_i2i else []
            if spec.task.startswith("controlnet"):
                sized = [("image", spec.image), ("hint", spec.hint)]
            for field, ref in sized:
                if ref is None:
                    continue
                if ref.startswith("in:"):
                    size = (int(meta(ref)["width"]), int(meta(ref)["height"]))
                else:
                    parent = specs[int(ref[4:])]
                    size = (parent.width, parent.height)
                if size != (spec.width, spec.height):
                    raise InvalidJob(
                        field,
                        f"{spec.model} {spec.task} needs this input at the output's size: it is "
                        f"{size[0]}x{size[1]}, the job asks {spec.width}x{spec.height}",
                        index=index,
                    )
            if (
                spec.mask
                and spec.image
                and spec.mask.startswith("in:")
                and spec.image.startswith("in:")
            ):
                im, mk = meta(spec.image), meta(spec.mask)
                if (im["width"], im["height"]) != (mk["width"], mk["height"]):
                    raise InvalidJob(
                        "mask",
                        f"size {mk['width']}x{mk['height']} does not match the image's {im['width']}x{im['height']}",
                        index=index,
                    )

    def _create(
        self, campaign_id: str, tenant: str, campaign: CampaignSpec, specs: list[JobSpec]
    ) -> None:
        pairs = [(new_id(), s) for s in specs]
        prefix = self.settings.s3_prefix
        manifest = {
            "campaign_id": campaign_id,
            "tenant": tenant,
            "name": campaign.name,
            "created_at": time.time(),
            "spec": campaign.model_dump(mode="json"),
            "jobs": [
                {
                    "job_id": j,
                    "spec": s.to_dict(),
                    "key": keys.image_object(prefix, tenant, campaign_id, j),
                }
                for j, s in pairs
            ],
        }
        # The manifest first: once it exists, `resume` can rebuild everything else from it.
        self.objects.put(
            keys.manifest_object(prefix, tenant, campaign_id),
            json.dumps(manifest, ensure_ascii=False).encode(),
            "application/json",
        )
        self.records.create_campaign(campaign_id, tenant, pairs, prefix=prefix, name=campaign.name)
        self._schedule(campaign_id, tenant, pairs, [j for j, _ in pairs])

    def _message(
        self,
        job_id: str,
        campaign_id: str,
        tenant: str,
        spec: JobSpec,
        ids: list[str] | None = None,
    ) -> dict:
        """A job's task arguments: ids, its spec, where its image goes and where its inputs are."""
        prefix = self.settings.s3_prefix
        inputs = {ref: keys.input_object(prefix, tenant, ref) for ref in spec.input_refs()}
        parents = spec.parent_indexes()
        for n, rec in zip(parents, self.records.get_many([ids[n] for n in parents]), strict=True):
            # A chained job reads the first image of the job it names.
            inputs[f"job:{n}"] = rec.s3_keys[0]
        kwargs = {
            "job_id": job_id,
            "campaign_id": campaign_id,
            "spec": spec.to_dict(),
            "key": keys.image_object(prefix, tenant, campaign_id, job_id),
            "inputs": inputs,
        }
        if not capabilities.MODELS[spec.model].two_stage:
            kwargs["emb_key"] = None
        return kwargs

    def _schedule(
        self, campaign_id: str, tenant: str, jobs: list[tuple[str, JobSpec]], ids: list[str]
    ) -> None:
        """Enqueue the jobs that can run now; hold chained jobs until the jobs they read are done."""
        ready, held = [], []
        for job_id, spec in jobs:
            (held if spec.parent_indexes() else ready).append((job_id, spec))
        self._enqueue(campaign_id, tenant, ready, ids)
        if not held:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id, spec in held:
            parents = [ids[n] for n in spec.parent_indexes()]
            message = {
                "task": task_name(spec),
                "kwargs": self._message(job_id, campaign_id, tenant, spec, ids),
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

    def _enqueue(
        self, campaign_id: str, tenant: str, pairs: list[tuple[str, JobSpec]], ids: list[str]
    ) -> None:
        """Publish prior tasks in pipelined batches (one Redis round trip per 1,000 messages)."""
        try:
            with self.app.producer_or_acquire() as producer:
                # Declared on every submission, not once per connection: after a Redis restart
                # without data the routing tables are gone and messages would be dropped.
                for queue in self.app.amqp.queues.values():
                    queue.bind(producer.channel).declare()
                with producer.batch(max_size=1000):
                    for job_id, spec in pairs:
                        self.app.send_task(
                            task_name(spec),
                            kwargs=self._message(job_id, campaign_id, tenant, spec, ids),
                            producer=producer,
                            declare=[],  # declared above, once; per message it is a round trip
                            # The job records are the results; a result subscription per
                            # message would be another Redis command each.
                            ignore_result=True,
                            kwargsrepr=f"{{'job_id': '{job_id}', 'campaign_id': '{campaign_id}'}}",
                        )
        except (redis.RedisError, OSError) as e:
            raise ServiceUnavailable(f"broker: cannot enqueue: {e}") from e

    # -- read ---------------------------------------------------------------------------------

    def campaign(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> Campaign:
        self._info(campaign_id, tenant)
        return Campaign(self, campaign_id, self.records.campaign_job_ids(campaign_id), tenant)

    def _info(self, campaign_id: str, tenant: str) -> dict:
        info = self.records.campaign(campaign_id)
        if info is None or info.get("tenant") != tenant:
            # Another tenant's campaign is indistinguishable from a missing one.
            raise NotFound(f"unknown campaign {campaign_id}")
        return info

    def status(self, campaign_id: str, *, tenant: str = keys.DEFAULT_TENANT) -> dict:
        info = self._info(campaign_id, tenant)
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
        return {
            "id": campaign_id,
            "name": info.get("name") or None,
            "state": state,
            "total": total,
            "counts": counts,
            "images_per_second": round(rate, 4) if rate else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "created_at": float(info["created_at"]),
            "started_at": started,
            "finished_at": finished,
        }

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
        info = self._info(campaign_id, tenant)
        total = int(info["total"])
        index = _decode_cursor(cursor)
        items: list[dict] = []
        while index < total and len(items) < limit:
            ids = self.records.campaign_job_ids(campaign_id, index, index + max(limit, 100) - 1)
            if not ids:
                break
            for offset, rec in enumerate(self.records.get_many(ids)):
                if rec is None or (state is not None and rec.state != state):
                    continue
                items.append(self._job_view(rec, presign_s))
                if len(items) == limit:
                    index += offset + 1
                    break
            else:
                index += len(ids)
        more = index < total
        return items, (_encode_cursor(index) if more else None)

    def _job_view(self, rec: JobRecord, presign_s: int) -> dict:
        done = rec.state == JobState.DONE
        return {
            "job_id": rec.job_id,
            "state": rec.state.value,
            "spec": rec.spec.to_dict(),
            "seed": rec.seed,
            "s3_key": rec.s3_key,
            "s3_keys": rec.s3_keys,
            "url": self.objects.presigned_url(rec.s3_key, presign_s) if done else None,
            "urls": [self.objects.presigned_url(k, presign_s) for k in rec.s3_keys] if done else [],
            "timings": rec.timings,
            "error": rec.error,
        }

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
        self._schedule(
            campaign_id, tenant, [(r.job_id, r.spec) for r in recs if r is not None], ids
        )

    def _finalize_if_complete(self, campaign_id: str) -> None:
        info = self.records.campaign(campaign_id)
        if info and sum(info["counts"][s.value] for s in ACTIVE) == 0:
            self.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})

    # -- finish -------------------------------------------------------------------------------

    def finalize(self, campaign_id: str) -> dict:
        """Write results.jsonl and contact_sheet.png beside the campaign's images."""
        return finalize(self.records, self.objects, self.settings.s3_prefix, campaign_id)


def task_name(spec: JobSpec) -> str:
    """Two-stage models start on the prior queue; single-stage ones (Kandinsky 3) on the decoder's."""
    return keys.PRIOR_TASK if capabilities.MODELS[spec.model].two_stage else keys.DECODER_TASK


def release(client: redis.Redis, records: RecordStore, app, job_id: str) -> bool:
    """Send a held chained job once every job it reads is done; exactly once (GETDEL wins)."""
    raw = client.get(keys.pending(job_id))
    if raw is None:
        return False
    held = json.loads(raw)
    if any(records.state(p) != JobState.DONE for p in held["parents"]):
        return False
    if client.getdel(keys.pending(job_id)) is None:
        return False  # someone else released it
    app.send_task(held["task"], kwargs=held["kwargs"])
    return True


def release_children(
    client: redis.Redis, records: RecordStore, app, job_id: str, campaign_id: str, ok: bool
) -> list[str]:
    """After a job ends: send its waiting children, or, if it did not succeed, fail them (and theirs)."""
    children = [c.decode() for c in client.smembers(keys.children(job_id))]
    if ok:
        return [c for c in children if release(client, records, app, c)]
    failed = []
    for child in children:
        if client.getdel(keys.pending(child)) is None:
            continue
        error = {
            "type": "ParentFailed",
            "message": f"job {job_id}, whose image this job reads, did not finish",
        }
        moved, _, complete = records.move(
            child, campaign_id, JobState.FAILED, (JobState.QUEUED,), error=error
        )
        if moved:
            failed.append(child)
            if complete:
                app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
            failed += release_children(client, records, app, child, campaign_id, ok=False)
    return failed


def finalize(records: RecordStore, objects: ObjectStore, prefix: str, campaign_id: str) -> dict:
    """Write a finished campaign's results manifest (JSONL) and contact sheet to S3."""
    info = records.campaign(campaign_id)
    if info is None:
        raise NotFound(f"unknown campaign {campaign_id}")
    tenant = info["tenant"]
    recs = [r for r in records.get_many(records.campaign_job_ids(campaign_id)) if r]
    lines = [
        json.dumps(
            {
                "job_id": r.job_id,
                "state": r.state.value,
                "spec": r.spec.to_dict(),
                "seed": r.seed,
                "s3_key": r.s3_key if r.state == JobState.DONE else None,
                "s3_keys": r.s3_keys if r.state == JobState.DONE else [],
                "timings": r.timings,
                "error": r.error,
            },
            ensure_ascii=False,
        )
        for r in recs
    ]
    results_key = keys.results_object(prefix, tenant, campaign_id)
    objects.put(results_key, ("\n".join(lines) + "\n").encode(), "application/x-ndjson")
    done = [k for r in recs if r.state == JobState.DONE for k in r.s3_keys][:SHEET_MAX]
    sheet_key = None
    if done:
        sheet_key = keys.contact_sheet_object(prefix, tenant, campaign_id)
        objects.put(sheet_key, contact_sheet([objects.get(k) for k in done]), "image/png")
    return {"results": results_key, "contact_sheet": sheet_key}


def contact_sheet(pngs: list[bytes], thumb: int = SHEET_THUMB) -> bytes:
    """A near-square grid of thumbnails (diffusers' make_image_grid), blank cells at the end."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    images = []
    for data in pngs:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im.thumbnail((thumb, thumb))
        cell = Image.new("RGB", (thumb, thumb))
        cell.paste(im, ((thumb - im.width) // 2, (thumb - im.height) // 2))
        images.append(cell)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    images += [Image.new("RGB", (thumb, thumb))] * (rows * cols - len(images))
    buf = io.BytesIO()
    make_image_grid(images, rows=rows, cols=cols).save(buf, format="PNG")
    return buf.getvalue()


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


@dataclass
class Campaign:
    """A handle on a submitted campaign (Python API)."""

    farm: Farm
    id: str
    job_ids: list[str]
    tenant: str = keys.DEFAULT_TENANT

    def records(self) -> list[JobRecord]:
        return [r for r in self.farm.records.get_many(self.job_ids) if r is not None]

    def status(self) -> dict:
        return self.farm.status(self.id, tenant=self.tenant)

    def wait(
        self, timeout: float | None = None, *, progress: bool = False, poll_s: float = 0.25
    ) -> list[JobRecord]:
        """Block until every job is done, failed or cancelled; return the records.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        wait_for_campaign(
            self.id,
            self.status,
            len(self.job_ids),
            timeout=timeout,
            progress=progress,
            poll_s=poll_s,
        )
        return self.records()

    def results(self, *, raise_on_failure: bool = False) -> list[JobRecord]:
        recs = self.records()
        if raise_on_failure:
            for r in recs:
                if r.state == JobState.FAILED:
                    err = r.error or {}
                    raise JobFailed(r.job_id, err.get("type", "?"), err.get("message", ""))
        return recs
