"""End to end through real `celery worker` processes (prior and decoder queues), Valkey and S3."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from farm import fleet, keys
from farm.domain.jobs import JobState
from farm.errors import InvalidJob
from tests.waiting import wait_until

K22_PRIOR_QUEUE = "prior.kandinsky-2.2"

pytestmark = pytest.mark.slow

FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2}


def test_jobs_become_pngs_of_the_requested_size(farm, object_store):
    sizes = [(64, 64), (64, 128), (128, 64), (192, 128)]
    jobs = [
        {"prompt": f"job {i}", "seed": i, "height": h, "width": w, **FAST}
        for i, (h, w) in enumerate(sizes)
    ]
    campaign = farm.submit(jobs)
    records = campaign.wait(timeout=120)
    assert [r.state.value for r in records] == ["done"] * len(jobs)
    status = campaign.status()
    assert status["counts"]["done"] == len(jobs) and status["state"] == "finished"
    for rec, (h, w) in zip(records, sizes, strict=True):
        assert rec.s3_key == keys.image_object("renders", "default", campaign.id, rec.job_id)
        img = Image.open(io.BytesIO(object_store.get(rec.s3_key)))
        assert img.format == "PNG" and img.size == (w, h)
        # The parameters travel inside the PNG, so a file explains itself.
        assert json.loads(img.text["farm"])["seed"] == rec.seed
        record = json.loads(object_store.get(keys.record_object(rec.s3_key)))
        assert record["s3_key"] == rec.s3_key and record["seed"] == rec.seed
        assert {"prior", "decode", "encode"} <= set(record["timings"])
        assert set(rec.timings) >= {"prior", "decode", "encode", "upload"}


def test_embeddings_are_dropped_once_decoded(farm, redis_client):
    campaign = farm.submit([{"prompt": "tidy", "seed": 3, "height": 64, "width": 64, **FAST}])
    (rec,) = campaign.wait(timeout=60)
    assert rec.state.value == "done"
    assert redis_client.exists(keys.embeddings(rec.job_id)) == 0


def test_fidelity_pixel_identical_to_one_process(farm, object_store, settings):
    """The farm's picture equals the guide's two calls in one process (CPU, float32, same seed)."""
    from tests.reference import render_in_one_process

    spec = {
        "prompt": "A alien cheeseburger creature eating itself, claymation, cinematic, moody lighting",
        "negative_prompt": "low quality, bad quality",
        "seed": 1234,
        "height": 128,
        "width": 64,
        "num_inference_steps": 4,
        "prior_num_inference_steps": 3,
        "guidance_scale": 4.0,
        "prior_guidance_scale": 1.0,
    }
    (rec,) = farm.submit([spec]).wait(timeout=120)
    assert rec.state.value == "done", rec.error
    farm_pixels = np.asarray(Image.open(io.BytesIO(object_store.get(rec.s3_key))).convert("RGB"))

    image = render_in_one_process(settings.tiny_dir, spec)
    reference = np.asarray(image.convert("RGB"))
    assert reference.shape == farm_pixels.shape == (128, 64, 3)
    assert reference.std() > 0  # not a blank image that would match anything
    np.testing.assert_array_equal(farm_pixels, reference)


def test_different_seeds_give_different_pictures(farm, object_store):
    jobs = [{"prompt": "same", "seed": s, "height": 64, "width": 64, **FAST} for s in (1, 2, 1)]
    recs = farm.submit(jobs).wait(timeout=60)
    pix = [np.asarray(Image.open(io.BytesIO(object_store.get(r.s3_key)))) for r in recs]
    assert np.abs(pix[0].astype(int) - pix[1]).mean() > 10
    # The three share one message, each rendered by a call of its own: the same seed and
    # prompt give the same pixels whatever the batch mates (FARM_BATCH_EXACT, the default).
    np.testing.assert_array_equal(pix[0], pix[2])


def test_a_job_renders_the_same_pixels_in_any_batch(farm, object_store):
    """Issue 17: one job alone, then inside three batch compositions (other prompts, seeds and
    negative prompts; batches of 4, 8 and 5 with it first, last and in the middle): its picture
    is the same bytes every time, prior and decoder both batched through the real workers."""
    spec = {"prompt": "a lighthouse at dusk", "seed": 77, "height": 64, "width": 64, **FAST}

    def other(i: int) -> dict:
        return {**spec, "prompt": f"other prompt number {i} " * (1 + i % 3), "seed": 500 + i}

    compositions = [
        [spec],
        [spec, *(other(i) for i in range(3))],
        [*(other(i) for i in range(3, 10)), spec],
        [other(10), other(11), spec, other(12), other(13)],
    ]
    pictures = []
    for jobs in compositions:
        records = farm.submit(jobs).wait(timeout=120)
        assert all(r.state.value == "done" for r in records), [r.error for r in records]
        (mine,) = [r for r in records if r.seed == spec["seed"]]
        pictures.append(np.asarray(Image.open(io.BytesIO(object_store.get(mine.s3_key)))))
    assert pictures[0].std() > 0
    for picture in pictures[1:]:
        np.testing.assert_array_equal(picture, pictures[0])


def test_bad_job_refused_before_anything_is_enqueued(farm, redis_client):
    before_queue = fleet.depths(redis_client, [K22_PRIOR_QUEUE])
    before_jobs = len(redis_client.keys(keys.job("*")))
    with pytest.raises(InvalidJob) as exc:
        farm.submit([{"prompt": "fine", **FAST}, {"prompt": "bad", "height": 100}])
    assert exc.value.field == "height" and exc.value.index == 1
    assert fleet.depths(redis_client, [K22_PRIOR_QUEUE]) == before_queue
    assert len(redis_client.keys(keys.job("*"))) == before_jobs


def test_a_high_campaign_overtakes_the_same_tenants_normal_one(farm):
    """Submitted after a normal campaign, a high one goes before its queued messages."""
    job = {"height": 128, "width": 128, "num_inference_steps": 8, "prior_num_inference_steps": 2}
    normal = farm.submit_campaign(
        {"jobs": [{"prompt": f"normal {i}", "seed": i, **job} for i in range(160)]}
    )
    high = farm.submit_campaign(
        {"jobs": [{"prompt": "urgent", "seed": 1, **job}], "priority": "high"}
    )
    assert farm.status(high.campaign_id)["priority"] == "high"
    first = farm.campaign(high.campaign_id).wait(timeout=120)
    assert first[0].state.value == "done"
    status = farm.status(normal.campaign_id)
    # The high job finished while most of the normal campaign still waited (in S3, not fed).
    assert status["counts"]["done"] < 80, status["counts"]
    farm.cancel(normal.campaign_id)
    farm.campaign(normal.campaign_id).wait(timeout=120)
    assert farm.status(normal.campaign_id)["state"] == "cancelled"


def test_lost_embeddings_are_recomputed(farm, redis_client, stack):
    """A decoder that finds its embeddings gone sends the job back to the prior."""
    campaign = farm.submit([{"prompt": "recompute", "seed": 5, "height": 64, "width": 64, **FAST}])
    job_id = campaign.job_ids[0]
    campaign.wait(timeout=60)
    # Replay the decoder message for a job whose embeddings expired (state reset as after a crash).
    farm.records.move(job_id, campaign.id, JobState.DECODING, tuple(JobState))
    redis_client.delete(keys.attempts(job_id, "decoder"), keys.attempts(job_id, "prior"))
    farm.app.send_task(
        keys.DECODER_TASK,
        kwargs={
            "job_id": job_id,
            "campaign_id": campaign.id,
            "spec": campaign.records()[0].spec.to_dict(),
            "key": campaign.records()[0].s3_key,
            "emb_key": keys.embeddings(job_id),
        },
    )
    wait_until(
        lambda: (
            redis_client.get(keys.attempts(job_id, "prior"))
            and campaign.records()[0].state.value == "done"
        ),
        60,
        what="the job done",
    )
    assert int(redis_client.get(keys.attempts(job_id, "prior"))) == 1
    assert campaign.records()[0].state.value == "done"


def test_duplicate_delivery_of_finished_job_is_skipped(farm, redis_client):
    campaign = farm.submit([{"prompt": "once", "seed": 9, "height": 64, "width": 64, **FAST}])
    (rec,) = campaign.wait(timeout=60)
    farm.app.send_task(
        keys.PRIOR_TASK,
        kwargs={
            "job_id": rec.job_id,
            "campaign_id": campaign.id,
            "spec": rec.spec.to_dict(),
            "key": rec.s3_key,
        },
    )
    # The duplicate is consumed and skipped: no new delivery counted, the job stays done.
    # (It waits in the queue's normal-priority list until a worker takes and acknowledges it.)
    wait_until(
        lambda: (
            fleet.depths(redis_client, [K22_PRIOR_QUEUE]) == [0]
            and not redis_client.hlen("unacked")
        ),
        30,
        what="the duplicate consumed and acknowledged",
    )
    assert int(redis_client.get(keys.attempts(rec.job_id, "prior"))) == 1
    assert campaign.records()[0].state.value == "done"


def test_pickle_message_is_refused(farm, redis_client):
    """A pickle-typed message injected into the broker never runs."""
    from kombu import Connection

    campaign = farm.submit([{"prompt": "probe", "seed": 1, "height": 64, "width": 64, **FAST}])
    campaign.wait(timeout=60)
    with Connection(farm.settings.redis_url) as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish(
            {"task": keys.PRIOR_TASK, "id": "evil", "args": [], "kwargs": {}},
            routing_key=K22_PRIOR_QUEUE,
            serializer="pickle",
            headers={
                "task": keys.PRIOR_TASK,
                "id": "evil",
                "lang": "py",
                "argsrepr": "",
                "kwargsrepr": "",
            },
        )
    # The worker drops it (content type not accepted); the queue drains and nothing ran.
    wait_until(
        lambda: fleet.depths(redis_client, [K22_PRIOR_QUEUE]) == [0], 20, what="queue drained"
    )
    assert farm.app.AsyncResult("evil").state == "PENDING"


def test_failure_is_recorded_with_type_and_message(farm, redis_client):
    """A job whose stage raises ends failed, with the error type and message on its record."""
    campaign = farm.submit([{"prompt": "boom", "seed": 1, "height": 64, "width": 64, **FAST}])
    job_id = campaign.job_ids[0]
    campaign.wait(timeout=60)
    farm.records.move(job_id, campaign.id, JobState.QUEUED, tuple(JobState))
    redis_client.delete(keys.attempts(job_id, "prior"))
    # A spec the worker cannot parse (bypassing submission's validation) fails in the task.
    farm.app.send_task(
        keys.PRIOR_TASK,
        kwargs={
            "job_id": job_id,
            "campaign_id": campaign.id,
            "spec": {"prompt": ""},
            "key": "x.png",
        },
    )
    wait_until(lambda: campaign.records()[0].state.value == "failed", 30, what="the job failed")
    rec = campaign.records()[0]
    assert rec.state.value == "failed"
    assert rec.error["type"] == "ValidationError" and "prompt" in rec.error["message"]


def test_rerendering_prompts_skips_the_prior(farm):
    """A campaign that re-renders prompts and seeds with new decoder settings reuses the prior."""
    jobs = [
        {"prompt": f"cached {i}", "seed": 40 + i, "height": 64, "width": 64, **FAST}
        for i in range(3)
    ]
    first = farm.submit(jobs).wait(timeout=60)
    again = farm.submit([{**j, "guidance_scale": 6.0} for j in jobs]).wait(timeout=60)
    assert [r.timings.get("prior_cache_hit") for r in first] == [0.0, 0.0, 0.0]
    assert [r.timings.get("prior_cache_hit") for r in again] == [1.0, 1.0, 1.0]
    assert all(r.state.value == "done" for r in again)
