"""S3 is the source of truth: a campaign resumes after Redis lost everything.

Runs on a stack of its own (its own Valkey and workers) because it flushes Redis completely.
"""

from __future__ import annotations

import secrets

import pytest
import redis

from farm.client import Client
from farm.errors import NotFound, ServiceUnavailable
from farm.local.servers import free_port, start_valkey
from farm.local.stack import Stack
from farm.settings import Settings
from tests.ports import children
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

SLOW = {"num_inference_steps": 10, "prior_num_inference_steps": 2, "height": 128, "width": 128}
SMALL = {**SLOW, "height": 64, "width": 64}
N_RESUME = 160  # six messages of 27: two rendering, four queued when Redis is flushed


@pytest.fixture(scope="module")
def own_stack(seaweed, tmp_path_factory):
    port, password = free_port(), secrets.token_urlsafe(16)
    valkey = start_valkey(tmp_path_factory.mktemp("valkey-resume"), port, password)
    token = "carol-" + secrets.token_urlsafe(16)
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("state-resume"),
        redis_url=f"redis://:{password}@127.0.0.1:{port}/0",
        s3_bucket="farm-resume",
        api_tokens=f"carol:{token}",
        api_port=0,
        flower_port=0,
        **seaweed,
    )
    stack = Stack(settings)
    try:
        stack.up(timeout=180)
        yield settings, stack, token
    finally:
        stack.down()
        valkey.stop()


def test_campaign_heals_itself_after_redis_flushed_completely(own_stack):
    settings, stack, token = own_stack
    from farm.stores.objects import ObjectStore

    objects = ObjectStore.from_settings(settings)
    r = redis.Redis.from_url(settings.redis_url)
    with Client(stack.read_state()["api_url"], token) as client:
        handle = client.submit_campaign(
            # More jobs than the decoders hold at once: some messages are still queued.
            [{"prompt": f"resume {i}", "seed": i, **SMALL} for i in range(N_RESUME)]
        )
        wait_until(lambda: handle.status()["counts"]["done"] >= 2, 60, 0.05, "two jobs done")
        r.flushall()  # queued messages, records, embeddings, counters: all gone
        # No human: the stack's feeder notices, rebuilds the campaign from its manifest in
        # S3, marks the images already there done and feeds the rest again.
        wait_until(lambda: _known(handle), 30, 0.2, "the campaign rebuilt by the feeder")
        status = handle.wait(timeout=180)
        assert status["counts"]["done"] == N_RESUME, status
        prefix = f"renders/carol/{handle.id}/"
        pngs = sorted(
            k for k in objects.list_keys(prefix) if k.endswith(".png") and "contact_sheet" not in k
        )
        jobs = list(handle.results())
        # Every image present, exactly once: one object per job, at the job's own key.
        assert pngs == sorted(j["s3_key"] for j in jobs) and len(set(pngs)) == N_RESUME
        # Resuming a finished campaign requeues nothing.
        assert handle.resume() == {"requeued": 0, "present": N_RESUME}


def _known(handle) -> bool:
    try:
        handle.status()
    except NotFound:  # until the feeder has rebuilt it
        return False
    return True


def test_api_says_503_when_redis_and_s3_are_down(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app

    dead = Settings(
        state_dir=tmp_path,
        redis_url="redis://127.0.0.1:1/0",
        s3_endpoint="http://127.0.0.1:1",
        s3_access_key="x",
        s3_secret_key="y",
        api_tokens="dave:" + "d" * 24,
    )
    from farm.service import Farm

    farm = Farm(dead, client=redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    farm.objects.client.meta.config.retries = {"max_attempts": 1}
    app = create_app(dead, farm=farm)
    with TestClient(app) as http:
        auth = {"Authorization": "Bearer " + "d" * 24}
        resp = http.post("/v1/campaigns", json={"jobs": [{"prompt": "x"}]}, headers=auth)
        assert resp.status_code == 503 and resp.json()["error"] == "ServiceUnavailable"
        assert http.get("/v1/campaigns/" + "ab" * 16, headers=auth).status_code == 503
        # An id that cannot be one is a 404 before any store is asked.
        assert http.get("/v1/campaigns/abc", headers=auth).status_code == 404
        # Bad input is still a 422, not a 503, even with everything down.
        assert (
            http.post("/v1/campaigns", json={"jobs": [{"prompt": ""}]}, headers=auth).status_code
            == 422
        )
        assert http.get("/readyz").status_code == 503
    with pytest.raises(ServiceUnavailable):
        farm.status("ab" * 16, tenant="dave")


def _kill_pool_while_decoding(handle, worker_pid: int, at_least: int) -> None:
    """SIGKILL every pool process of a worker once ``at_least`` jobs of the campaign decode."""
    import os
    import signal

    wait_until(lambda: handle.status()["counts"]["decoding"] >= at_least, 60, 0.02, "jobs decoding")
    victims = children(worker_pid)
    assert victims, "the decoder worker has no pool process"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


def test_worker_killed_mid_decode_job_still_finishes_once(own_stack):
    """SIGKILL the decoder's pool process mid-job: late ack + reject-on-worker-lost redeliver it."""

    settings, stack, token = own_stack
    from farm.stores.objects import ObjectStore

    decoder = next(p for p in stack.procs() if p.name == "worker-decoder-1")
    slow = {**SLOW, "num_inference_steps": 60, "height": 192, "width": 192}
    with Client(stack.read_state()["api_url"], token) as client:
        handle = client.submit_job({"prompt": "survive a crash", "seed": 11, **slow})
        _kill_pool_while_decoding(handle, decoder.pid, at_least=1)
        status = handle.wait(timeout=120)
        assert status["counts"]["done"] == 1, status
        (job,) = handle.results()
    objects = ObjectStore.from_settings(settings)
    keys_ = [
        k
        for k in objects.list_keys(f"renders/carol/{handle.id}/")
        if k.endswith(".png") and "contact" not in k
    ]
    assert keys_ == [job["s3_key"]]
    r = redis.Redis.from_url(settings.redis_url)
    from farm import keys

    assert int(r.get(keys.attempts(job["job_id"], "decoder"))) == 2  # delivered again, once


def test_worker_killed_mid_batch_loses_no_job_and_duplicates_none(own_stack):
    """A batch message is acknowledged after all its jobs are stored: kill the decoder's pool
    processes while they render batches, and every job still ends done, each image once."""

    settings, stack, token = own_stack
    from farm import keys
    from farm.stores.objects import ObjectStore

    decoder = next(p for p in stack.procs() if p.name == "worker-decoder-1")
    slow = {**SLOW, "num_inference_steps": 40, "height": 128, "width": 128}
    with Client(stack.read_state()["api_url"], token) as client:
        handle = client.submit_campaign(
            [{"prompt": f"batch crash {i}", "seed": 100 + i, **slow} for i in range(8)]
        )
        _kill_pool_while_decoding(handle, decoder.pid, at_least=2)
        status = handle.wait(timeout=180)
        assert status["counts"]["done"] == 8, status
        jobs = list(handle.results())
    batches = {j["timings"]["decoder_batch"] for j in jobs}
    assert max(batches) > 1, "the jobs did not render in batches"
    objects = ObjectStore.from_settings(settings)
    pngs = sorted(
        k
        for k in objects.list_keys(f"renders/carol/{handle.id}/")
        if k.endswith(".png") and "contact" not in k
    )
    assert pngs == sorted(j["s3_key"] for j in jobs)  # every job's image, once
    r = redis.Redis.from_url(settings.redis_url)
    attempts = [int(r.get(keys.attempts(j["job_id"], "decoder")) or 0) for j in jobs]
    assert max(attempts) == 2  # the killed batches were delivered again, once


def test_lone_jobs_of_many_campaigns_render_together_and_survive_a_kill(own_stack):
    """One-job campaigns sent while the decoders are busy are gathered into shared renders
    (across campaigns); killing the decoder's pool mid-render loses none, duplicates none."""
    settings, stack, token = own_stack
    from farm import keys
    from farm.stores.objects import ObjectStore

    decoder = next(p for p in stack.procs() if p.name == "worker-decoder-1")
    slow = {**SLOW, "num_inference_steps": 40}
    with Client(stack.read_state()["api_url"], token) as client:
        handles = [
            client.submit_job({"prompt": f"lone {i}", "seed": 300 + i, **slow}) for i in range(10)
        ]
        _kill_pool_while_decoding(handles[-1], decoder.pid, at_least=1)
        jobs = []
        for handle in handles:
            assert handle.wait(timeout=180)["counts"]["done"] == 1
            jobs += list(handle.results())
    shared = [j for j in jobs if j["timings"]["decoder_batch"] > 1]
    assert shared, "no lone job was rendered with another campaign's job"
    objects = ObjectStore.from_settings(settings)
    r = redis.Redis.from_url(settings.redis_url)
    for handle, job in zip(handles, jobs, strict=True):
        pngs = [
            k
            for k in objects.list_keys(f"renders/carol/{handle.id}/")
            if k.endswith(".png") and "contact" not in k
        ]
        assert pngs == [job["s3_key"]]  # its image, once
    attempts = [int(r.get(keys.attempts(j["job_id"], "decoder")) or 0) for j in jobs]
    assert max(attempts) == 2  # the killed renders were delivered again, once
