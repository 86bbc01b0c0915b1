"""A decoder worker killed whole (main process and pool) while it holds jobs it has not started:
they run again within the reconciler's grace, not at kombu's visibility timeout (an hour).

A stack of its own, as ``farm up --workers prior=1,decoder=2`` makes it, with the default
visibility timeout and reconciler settings. One decoder's process group is SIGKILLed in the
middle of a render of a message whose next render's jobs have not started, and never restarted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import time
from collections import Counter

import pytest
import redis

from farm import keys
from farm.client import Client
from farm.local.servers import _reap, free_port, start_valkey
from farm.local.stack import Stack
from farm.settings import Settings
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

N_JOBS = 48
SPEC = {"num_inference_steps": 12, "prior_num_inference_steps": 2, "height": 128, "width": 128}
DEADLINE_S = 120
_RENDER = re.compile(r"(rendering|rendered) ((?:[0-9a-f]{32}-\d+ ?)+)")


@pytest.fixture(scope="module")
def own_stack(seaweed, tmp_path_factory):
    port, password = free_port(), secrets.token_urlsafe(16)
    valkey = start_valkey(tmp_path_factory.mktemp("valkey-dead"), port, password)
    token = "erin-" + secrets.token_urlsafe(16)
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("state-dead"),
        redis_url=f"redis://:{password}@127.0.0.1:{port}/0",
        s3_bucket="farm-dead-worker",
        api_tokens=f"erin:{token}",
        api_port=0,
        flower_port=0,
        torch_threads=1,
        **seaweed,
    )
    assert settings.visibility_timeout_s == 3600  # the default: an hour
    stack = Stack(settings)
    try:
        stack.up(workers={"prior": 1, "decoder": 2}, timeout=240)
        yield settings, stack, token
    finally:
        stack.down()
        valkey.stop()


def _renders(log) -> tuple[Counter, Counter, list[str]]:
    """Renders started and completed per job in one worker's log, and the jobs of its last
    render if that render has not completed."""
    started, completed, current = Counter(), Counter(), []
    for line in log.read_text(errors="replace").splitlines():
        m = _RENDER.search(line)
        if m:
            jobs = m.group(2).split()
            (started if m.group(1) == "rendering" else completed).update(jobs)
            current = jobs if m.group(1) == "rendering" else []
    return started, completed, current


def _held(client) -> list[list[str]]:
    """The job ids of every decoder message a worker holds (kombu's ``unacked``)."""
    out = []
    for entry in client.hvals("unacked"):
        payload = json.loads(entry)[0]
        if payload["headers"].get("task") == "farm.decoder":
            _, kwargs, _ = json.loads(base64.b64decode(payload["body"]))
            out.append([j["job_id"] for j in kwargs["jobs"]])
    return out


def test_a_dead_decoders_jobs_are_done_within_two_minutes_each_image_once(own_stack):
    settings, stack, token = own_stack
    from farm.stores.objects import ObjectStore

    client = redis.Redis.from_url(settings.redis_url)
    logs = {p.name: stack.dir / "logs" / f"{p.name}.log" for p in stack.procs()}
    decoders = {p.name: p for p in stack.procs() if p.name.startswith("worker-decoder")}
    with Client(stack.read_state()["api_url"], token) as api:
        handle = api.submit_campaign(
            [{"prompt": f"dead worker {i}", "seed": 500 + i, **SPEC} for i in range(N_JOBS)]
        )

        def victim():
            """A decoder mid-render whose message holds jobs that have not started."""
            held = _held(client)
            for name in decoders:
                rendering = set(_renders(logs[name])[2])
                for jobs in held:
                    if rendering and rendering < set(jobs):
                        pipe = client.pipeline(transaction=False)
                        for job_id in jobs:
                            pipe.hget(keys.job(job_id), "state")
                        states = dict(zip(jobs, pipe.execute(), strict=True))
                        waiting = [j for j in jobs if states[j] in (b"queued", b"prior")]
                        if waiting:
                            return name, waiting
            return None

        name, waiting = wait_until(victim, 120, 0.2, "a decoder rendering with jobs to go")
        os.killpg(decoders[name].pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: not decoders[name].alive(), 30, 0.05, f"{name} gone")
        _reap(decoders[name].pid)
        # Never restarted: the other decoder does the rest.
        status = handle.wait(timeout=DEADLINE_S)
        took = time.monotonic() - killed
        assert status["counts"]["done"] == N_JOBS, status
        jobs = list(handle.results())
    print(f"\nkilled {name} holding {len(waiting)} unstarted jobs; all done {took:.1f}s after")
    assert took <= DEADLINE_S
    started, completed = Counter(), Counter()
    for worker in decoders:
        s, c, _ = _renders(logs[worker])
        started, completed = started + s, completed + c
    ids = [j["job_id"] for j in jobs]
    # Each job rendered to the end once (a killed render only started), each image stored once.
    assert {completed[j] for j in ids} == {1}, completed
    assert max(started[j] for j in ids) <= 2
    objects = ObjectStore.from_settings(settings)
    pngs = Counter(
        k.rsplit("/", 1)[1].removesuffix(".png")
        for k in objects.list_keys(f"renders/erin/{handle.id}/")
        if k.endswith(".png") and "contact" not in k
    )
    assert pngs == Counter(ids)
    print(
        "renders completed per job:",
        dict(Counter(completed[j] for j in ids)),
        "started:",
        dict(Counter(started[j] for j in ids)),
        "objects per job:",
        dict(Counter(pngs.values())),
    )
