"""Redis high availability: a campaign survives its primary's death behind Sentinel.

A real primary, a replica and a Sentinel (all Valkey, with passwords), and a stack of its own
whose broker, result backend, records and embeddings all go through ``sentinel://``. The primary
is SIGKILLed mid-campaign; Sentinel promotes the replica, every client reconnects to it, and the
campaign completes with every image exactly once in S3 (jobs whose last writes the replica never
got are sent again by the feeder's reconciler).
"""

from __future__ import annotations

import os
import secrets
import signal

import pytest
import redis

from farm.client import Client
from farm.errors import ServiceUnavailable
from farm.local.servers import free_port, start_sentinel, start_valkey_node
from farm.local.stack import Stack
from farm.settings import Settings
from farm.stores.connect import parse_sentinel, redis_client, transport_options
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

SMALL = {"num_inference_steps": 10, "prior_num_inference_steps": 2, "height": 64, "width": 64}
N_JOBS = 48
MASTER = "farm-primary"  # not the default: the setting must reach every client


@pytest.fixture(scope="module")
def ha(seaweed, tmp_path_factory):
    base = tmp_path_factory.mktemp("sentinel")
    password, sentinel_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    ports = {"primary": free_port(), "replica": free_port(), "sentinel": free_port()}
    primary = ("127.0.0.1", ports["primary"])
    procs, stack = {}, None
    try:
        procs["primary"] = start_valkey_node(base / "primary", ports["primary"], password)
        procs["replica"] = start_valkey_node(
            base / "replica", ports["replica"], password, replica_of=primary
        )
        procs["sentinel"] = start_sentinel(
            base / "sentinel",
            ports["sentinel"],
            primary,
            password,
            master=MASTER,
            sentinel_password=sentinel_password,
            down_after_ms=1000,
            failover_timeout_ms=5000,
        )
        sentinel = redis.Redis(port=ports["sentinel"], password=sentinel_password)
        replica = redis.Redis(port=ports["replica"], password=password)
        wait_until(
            lambda: (
                replica.info("replication").get("master_link_status") == "up"
                and sentinel.execute_command("SENTINEL", "REPLICAS", MASTER)
            ),
            20,
            0.1,
            "the replica in sync and known to Sentinel",
        )
        token = "erin-" + secrets.token_urlsafe(16)
        settings = Settings(
            state_dir=tmp_path_factory.mktemp("state-sentinel"),
            redis_url=f"sentinel://:{password}@127.0.0.1:{ports['sentinel']}/0",
            redis_master=MASTER,
            redis_sentinel_password=sentinel_password,
            s3_bucket="farm-sentinel",
            models="kandinsky-2.2",  # the workers load one family's parts, not every family's
            # A message a worker held when the primary died, whose ack or restore fell in the
            # failover, waits in kombu's unacked hash until the visibility timeout (it covers
            # its jobs, so the reconciler waits too): short here, above the hard time limit.
            task_soft_time_limit_s=25,
            task_time_limit_s=30,
            visibility_timeout_s=35,
            api_tokens=f"erin:{token}",
            api_port=0,
            flower_port=0,
            torch_threads=1,
            # The jobs whose last writes the replica never got are found sooner.
            reconcile_interval_s=3,
            reconcile_grace_s=5,
            **seaweed,
        )
        stack = Stack(settings)
        stack.up(timeout=180)
        yield {"settings": settings, "stack": stack, "token": token, "procs": procs,
               "ports": ports, "sentinel": sentinel, "replica": replica}  # fmt: skip
    finally:
        if stack is not None:
            stack.down()
        for proc in reversed(procs.values()):
            proc.stop()


def test_sentinel_url_is_parsed_like_kombu():
    target = parse_sentinel("sentinel://u:p%40ss@h1:26380/2;sentinel://:p%40ss@h2")
    assert target.hosts == (("h1", 26380), ("h2", 26379))
    assert (target.username, target.password, target.db) == ("u", "p@ss", 2)
    with pytest.raises(ValueError):
        parse_sentinel("redis://h1:6379;sentinel://h2:26379")
    plain = Settings(redis_url="redis://127.0.0.1:6379/0", redis_master="m")
    assert transport_options(plain) == {}
    ha = Settings(redis_url="sentinel://:x@h1:26379", redis_master="m")
    assert transport_options(ha) == {"master_name": "m"}


def test_celery_config_names_the_master(ha):
    from workers.app import create_app

    app = create_app(ha["settings"])
    try:
        for name in ("broker_transport_options", "result_backend_transport_options"):
            options = app.conf[name]
            assert options["master_name"] == MASTER
            assert options["sentinel_kwargs"]["password"]
        # Celery lists its configuration with the sentinels' password masked.
        shown = app.conf.table(with_defaults=False, censored=True)
        assert "sentinel_kwargs" in str(shown)
        assert ha["settings"].redis_sentinel_password.get_secret_value() not in str(shown)
    finally:
        app.close()


def test_campaign_completes_across_a_failover(ha):
    settings, stack = ha["settings"], ha["stack"]
    from farm.stores.objects import ObjectStore

    objects = ObjectStore.from_settings(settings)
    client = redis_client(settings, socket_connect_timeout=2)
    assert client.connection_pool.get_master_address() == ("127.0.0.1", ha["ports"]["primary"])
    with Client(stack.read_state()["api_url"], ha["token"]) as api:
        handle = api.submit_campaign(
            [{"prompt": f"failover {i}", "seed": i, **SMALL} for i in range(N_JOBS)]
        )
        wait_until(lambda: _counts(handle)["done"] >= 4, 60, 0.05, "four jobs done")
        primary = ha["procs"]["primary"]
        os.killpg(primary.pid, signal.SIGKILL)
        primary.stop()  # reaps it
        # Sentinel notices within a second and promotes the replica.
        new_primary = ("127.0.0.1", ha["ports"]["replica"])
        wait_until(lambda: _master(ha["sentinel"]) == new_primary, 30, 0.1, "the replica promoted")
        assert _counts(handle)["done"] < N_JOBS, "the failover came after the campaign"
        # The very same client object now writes to the new primary.
        assert wait_until(lambda: _try(lambda: client.set("farm:test:after", "1")), 20, 0.2)
        assert ha["replica"].get("farm:test:after") == b"1"
        done = wait_until(
            lambda: _counts(handle)["done"] == N_JOBS or None, 150, 0.5, "every job done"
        )
        assert done
        counts = _counts(handle)
        assert counts["failed"] == 0 and counts["cancelled"] == 0, counts
        prefix = f"renders/erin/{handle.id}/"
        pngs = sorted(
            k for k in objects.list_keys(prefix) if k.endswith(".png") and "contact_sheet" not in k
        )
        jobs = list(handle.results())
        # Every image present, exactly once: one object per job, at the job's own key.
        assert len(jobs) == N_JOBS and all(j["state"] == "done" for j in jobs)
        assert pngs == sorted(j["s3_key"] for j in jobs) and len(set(pngs)) == N_JOBS
    client.close()


def _counts(handle) -> dict:
    """The campaign's counts; while the farm answers 503 (mid-failover), nothing done yet."""
    try:
        return handle.status()["counts"]
    except ServiceUnavailable:
        return {"done": -1, "failed": 0, "cancelled": 0}


def _master(sentinel) -> tuple[str, int] | None:
    try:
        host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
    except (redis.RedisError, TypeError, ValueError):
        return None
    return host.decode(), int(port)


def _try(call) -> bool:
    try:
        call()
    except redis.RedisError:
        return False
    return True
