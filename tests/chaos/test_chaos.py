"""Chaos: a campaign of a few hundred tiny jobs survives every fault we can inject, with no human.

One campaign on a stack of its own (its own Valkey, SeaweedFS, two prior and two decoder
workers, feeder, API). While it renders, the test, acting as the fleet's process supervisor
(it starts a worker again after it died, as systemd or Kubernetes would, and nothing else):

 1. SIGKILLs a decoder's pool process mid-render;
 2. SIGKILLs a prior worker, main process and pool, and starts it again;
 3. SIGKILLs a decoder worker, main process and pool, and starts it again;
 4. SIGTERMs a decoder (a deploy: warm shutdown) and starts it again;
 5. SIGKILLs Valkey and starts it again from its AOF;
 6. flushes Redis entirely (FLUSHALL);
 7. freezes the S3 server for 10 s (SIGSTOP, then SIGCONT);
 8. SIGKILLs a decoder's pool process while it renders a batch.

No resume, no retry, no command of ours: the farm heals itself (late acks, the feeder's
rebuild from S3, the reconciler). Then ``checker`` classifies every job of the manifest: all
must be ok, and every job rendered more than once must be pixel-identical to a render of its
spec in this process.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import threading
import time

import numpy as np
import pytest
import redis

from farm import keys
from farm.client import Client
from farm.errors import FarmError
from farm.local.servers import Proc, free_port, start_valkey, start_weed
from farm.local.stack import Stack
from farm.settings import Settings
from tests.chaos import checker
from tests.ports import children
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

N_JOBS = int(os.environ.get("FARM_CHAOS_JOBS", "240"))
SPEC = {
    "height": 64,
    "width": 64,
    "num_inference_steps": 12,
    "prior_num_inference_steps": 2,
}
TENANT = "chaos"


class Servers:
    """The stack's Valkey and SeaweedFS, which the test kills, restarts and freezes."""

    def __init__(self, root):
        self.root = root
        self.redis_port, self.password = free_port(), secrets.token_urlsafe(16)
        self.valkey = start_valkey(root / "valkey", self.redis_port, self.password)
        self.s3_port = free_port()
        self.access, self.secret = "chaos" + secrets.token_hex(4), secrets.token_urlsafe(24)
        self.weed = start_weed(root / "seaweed", self.s3_port, self.access, self.secret)

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.redis_port}/0"

    def restart_valkey(self) -> None:
        self.valkey = start_valkey(self.root / "valkey", self.redis_port, self.password)

    def stop(self) -> None:
        for proc in (self.valkey, self.weed):
            os.killpg(proc.pid, signal.SIGCONT) if proc.alive() else None
            proc.stop()


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos")
    servers = Servers(root)
    token = f"{TENANT}-" + secrets.token_urlsafe(16)
    settings = Settings(
        state_dir=root / "state",
        redis_url=servers.redis_url,
        s3_endpoint=f"http://127.0.0.1:{servers.s3_port}",
        s3_access_key=servers.access,
        s3_secret_key=servers.secret,
        s3_bucket="farm-chaos",
        api_tokens=f"{TENANT}:{token}",
        api_port=0,
        flower_port=0,
        torch_threads=1,
        # Short enough that a killed worker's message comes back within the test (kombu
        # redelivers an unacknowledged message after the visibility timeout), long enough that
        # a render held up by the 10 s S3 freeze on a loaded machine stays within its limits.
        visibility_timeout_s=45,
        task_time_limit_s=40,
        task_soft_time_limit_s=35,
        reconcile_interval_s=3,
        reconcile_grace_s=8,
        # Several faults may hit one job: each of its deliveries that died counts.
        max_attempts=6,
    )
    stack = Stack(settings)
    try:
        stack.up(workers={"prior": 2, "decoder": 2}, timeout=240)
        yield settings, stack, servers, token
    finally:
        stack.down()
        servers.stop()


def _proc(stack: Stack, name: str) -> Proc:
    return next(p for p in stack.procs() if p.name == name)


class Campaign:
    """The campaign under test, read through the API (which may be briefly unable to answer)."""

    def __init__(self, handle):
        self.handle = handle

    def counts(self) -> dict[str, int]:
        try:
            return self.handle.status()["counts"]
        except FarmError:  # Redis down or just flushed: nothing known this instant
            return {}

    def done(self) -> int:
        return self.counts().get("done", 0)

    def at(self, fraction: float, what: str) -> None:
        wait_until(lambda: self.done() >= fraction * N_JOBS, 240, 0.1, f"{what}: progress")

    def decoding(self, at_least: int = 1) -> None:
        wait_until(lambda: self.counts().get("decoding", 0) >= at_least, 60, 0.01, "jobs rendering")


def _kill_pool(stack: Stack, name: str) -> int:
    """SIGKILL the pool processes of one worker (prefork starts new ones)."""
    victims = children(_proc(stack, name).pid)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return len(victims)


def _kill_worker(stack: Stack, name: str, sig: int) -> None:
    """Signal a worker's main process (SIGKILL: its whole group), wait for it to be gone, and
    start it again as a supervisor would."""
    proc = _proc(stack, name)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, sig)
    wait_until(lambda: not proc.alive(), 60, 0.05, f"{name} gone")
    from farm.local.servers import _reap

    _reap(proc.pid)
    stack.respawn(name)


def test_a_campaign_survives_every_fault_with_no_human(chaos):
    settings, stack, servers, token = chaos
    faults: list[str] = []
    t0 = time.monotonic()
    with Client(stack.read_state()["api_url"], token) as client:
        handle = client.submit_campaign(
            [{"prompt": f"chaos {i % 17}", "seed": i, **SPEC} for i in range(N_JOBS)]
        )
        c = Campaign(handle)

        c.at(0.04, "decoder pool kill")
        c.decoding()
        assert _kill_pool(stack, "worker-decoder-1") > 0
        faults.append("SIGKILL decoder pool process mid-render")

        c.at(0.10, "prior worker kill")
        _kill_worker(stack, "worker-prior-1", signal.SIGKILL)
        faults.append("SIGKILL prior worker (main + pool), restarted")

        c.at(0.18, "decoder worker kill")
        c.decoding()
        _kill_worker(stack, "worker-decoder-1", signal.SIGKILL)
        faults.append("SIGKILL decoder worker (main + pool), restarted")

        c.at(0.26, "decoder deploy")
        _kill_worker(stack, "worker-decoder-2", signal.SIGTERM)
        faults.append("SIGTERM decoder worker (warm shutdown), restarted")

        c.at(0.34, "valkey kill")
        os.kill(servers.valkey.pid, signal.SIGKILL)
        wait_until(lambda: not servers.valkey.alive(), 10, 0.02, "valkey gone")
        servers.valkey.stop()  # reaps it
        servers.restart_valkey()
        faults.append("SIGKILL Valkey, restarted from its AOF")

        c.at(0.45, "flush")
        redis.Redis.from_url(settings.redis_url).flushall()
        faults.append("FLUSHALL")

        c.at(0.55, "S3 freeze")
        # Frozen for 10 s by the clock while the test goes on watching progress (the next fault
        # waits for jobs that can only finish once S3 thaws).
        os.killpg(servers.weed.pid, signal.SIGSTOP)
        thaw = threading.Timer(10, os.killpg, (servers.weed.pid, signal.SIGCONT))
        thaw.start()
        faults.append("SIGSTOP SeaweedFS for 10 s")

        c.at(0.65, "mid-batch kill")
        c.decoding(at_least=2)
        killed = _kill_pool(stack, "worker-decoder-1") + _kill_pool(stack, "worker-decoder-2")
        assert killed > 0
        faults.append("SIGKILL decoder pool processes mid-batch")

        thaw.join()
        status = handle.wait(timeout=300)
        elapsed = time.monotonic() - t0
        jobs = list(handle.stream("jobs"))

    from farm.stores.objects import ObjectStore

    objects = ObjectStore.from_settings(settings)
    prefix = keys.campaign_prefix(settings.s3_prefix, TENANT, handle.id)
    results_key = keys.results_object(settings.s3_prefix, TENANT, handle.id)
    wait_until(lambda: results_key in objects.list_keys(prefix), 60, 0.2, "the results file")
    results = objects.get(results_key).decode().splitlines()
    logs = sorted((stack.dir / "logs").glob("worker-decoder-*.log"))
    renders = checker.executions(logs)
    job_ids = [f"{handle.id}-{i}" for i in range(N_JOBS)]
    report = checker.check(job_ids, jobs, objects.list_keys(prefix + "/"), results, prefix, renders)
    print(f"\n{N_JOBS} jobs, {len(faults)} faults in {elapsed:.0f} s: " + "; ".join(faults))
    print(report.lines())
    assert status["counts"]["done"] == N_JOBS, (status, report.lines())
    assert report.counts["ok"] == N_JOBS and sum(report.counts.values()) == N_JOBS, report.lines()
    assert len(faults) == 8

    # The kills hit renders: their jobs started again, and must look as if rendered once.
    again = [j for j in job_ids if renders[0].get(j, 0) > 1]
    assert again, "no render was interrupted: the faults missed the renders"
    by_id = {j["job_id"]: j for j in jobs}
    _same_as_one_process(settings, objects, [by_id[j] for j in again[:12]])


def _same_as_one_process(settings: Settings, objects, jobs: list[dict]) -> None:
    """Each job's stored image equals its spec rendered alone in this process (the guide's
    calls), bit for bit: the prior runs each prompt alone and the decoder each job by a call of
    its own (``FARM_BATCH_EXACT``), so a job rendered twice, with other batch mates each time,
    is still its lone render."""
    from PIL import Image

    from tests.reference import render_in_one_process

    exact = worst = 0
    for job in jobs:
        image = render_in_one_process(settings.tiny_dir, job["spec"])
        stored = Image.open(io.BytesIO(objects.get(job["s3_key"]))).convert("RGB")
        farm_px = np.asarray(stored).astype(int)
        ref = np.asarray(image.convert("RGB")).astype(int)
        diff = np.abs(farm_px - ref)
        assert diff.max() == 0, (job["job_id"], diff.max(), (diff > 0).mean())
        exact += bool((diff == 0).all())
        worst = max(worst, int(diff.max()))
    print(
        f"re-executed jobs checked against one process: {len(jobs)}, bit-identical {exact}, "
        f"largest difference {worst}/255"
    )
