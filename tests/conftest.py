"""Fixtures that start real servers on free 127.0.0.1 ports and stop them by PID.

Session-scoped: one Valkey, one SeaweedFS, one stack of real `celery worker` processes + Flower.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import redis

from farm.local.servers import free_port, start_valkey, start_weed
from farm.settings import Settings


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    port, password = free_port(), secrets.token_urlsafe(16)
    proc = start_valkey(tmp_path_factory.mktemp("valkey"), port, password)
    _PROCS["valkey"] = proc
    yield f"redis://:{password}@127.0.0.1:{port}/0"
    proc.stop()


_PORTS: dict[str, dict] = {}
_PROCS: dict = {}  # the session's servers, by name: the port probe covers them too


@pytest.fixture(scope="session")
def server_pids(valkey, seaweed) -> list[int]:
    """The session's Valkey and SeaweedFS processes."""
    return [p.pid for p in _PROCS.values()]


@pytest.fixture(scope="session")
def seaweed_ports(seaweed) -> dict:
    """Every port the session's SeaweedFS listens on, by role (s3, filer, volume, master ...)."""
    return _PORTS["seaweed"]


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    port = free_port()
    access, secret = "test" + secrets.token_hex(4), secrets.token_urlsafe(24)
    proc = start_weed(tmp_path_factory.mktemp("seaweed"), port, access, secret)
    _PORTS["seaweed"] = proc.ports
    _PROCS["seaweed"] = proc
    yield {
        "s3_endpoint": f"http://127.0.0.1:{port}",
        "s3_access_key": access,
        "s3_secret_key": secret,
    }
    proc.stop()


TOKENS = {"alice": "alice-" + secrets.token_urlsafe(16), "bob": "bob-" + secrets.token_urlsafe(16)}


@pytest.fixture(scope="session")
def tokens() -> dict[str, str]:
    return TOKENS


@pytest.fixture(scope="session")
def settings(valkey, seaweed, tmp_path_factory) -> Settings:
    state = tmp_path_factory.mktemp("state")
    api_tokens = ",".join(f"{t}:{tok}" for t, tok in TOKENS.items())
    return Settings(
        state_dir=state,
        redis_url=valkey,
        s3_bucket="farm-test",
        api_tokens=api_tokens,
        api_port=0,
        flower_port=0,
        torch_threads=THREADS,
        # The webhook tests' receiver listens on 127.0.0.1.
        webhook_allow_private=True,
        **seaweed,
    )


# Float reductions split over threads sum in another order: the farm's pixels equal an in-process
# render exactly when both use the same number of torch threads (else within 1/255). The
# session's workers and this process use the same count.
THREADS = 1


@pytest.fixture(scope="session", autouse=True)
def _same_threads_as_the_workers():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def object_store(settings):
    from farm.local.stack import Stack

    Stack(settings)._ensure_bucket(settings)
    from farm.stores.objects import ObjectStore

    return ObjectStore.from_settings(settings)


@pytest.fixture(autouse=True)
def _clean_farm_data(request):
    """Each test that uses the session's Redis starts without other tests' campaigns and jobs.

    The farm's own data keys go; what the long-lived workers need stays (their heartbeats, the
    broker's queue bindings), so the session's workers keep serving.
    """
    if "valkey" not in request.fixturenames and "stack" not in request.fixturenames:
        yield
        return
    client = redis.Redis.from_url(request.getfixturevalue("valkey"))
    # The feeder's epoch stays too: without it the stack's feeder would rebuild earlier tests'
    # unfinished campaigns from S3, as it does after a real Redis loss.
    keep = (b"farm:worker", b"farm:workers", b"farm:feed:epoch")
    batch = [k for k in client.scan_iter(match="farm:*", count=1000) if not k.startswith(keep)]
    for start in range(0, len(batch), 500):
        client.delete(*batch[start : start + 500])
    client.close()
    yield


@pytest.fixture
def redis_client(valkey):
    client = redis.Redis.from_url(valkey)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Every family's tiny pipelines, loaded in this process, by stage (the batching tests)."""
    from farm.families import REGISTRY
    from farm.local.models import build_tiny
    from workers.context import Models

    settings = Settings(state_dir=tmp_path_factory.mktemp("state"))
    build_tiny(settings, list(REGISTRY))
    return {stage: Models(settings, stage, list(REGISTRY)) for stage in ("prior", "decoder")}


@pytest.fixture(scope="session")
def stack(settings, object_store):
    """Real prior and decoder workers (and Flower) against the session's servers."""
    from farm.local.stack import Stack

    st = Stack(settings)
    st.up(timeout=180)
    yield st
    st.down()


@pytest.fixture(scope="session")
def api_url(stack) -> str:
    return stack.read_state()["api_url"]


@pytest.fixture
def alice(api_url, tokens):
    from farm.client import Client

    with Client(api_url, tokens["alice"]) as client:
        yield client


@pytest.fixture
def bob(api_url, tokens):
    from farm.client import Client

    with Client(api_url, tokens["bob"]) as client:
        yield client


@pytest.fixture(scope="session")
def farm(stack, settings):
    from farm.service import Farm

    return Farm(settings)


def tiny_dir(settings: Settings) -> Path:
    return settings.tiny_dir


@pytest.hookimpl(trylast=True)  # after the session fixtures' own teardown (runner's hook)
def pytest_sessionfinish(session, exitstatus):
    """The last net: any child a test started and did not reap is named, stopped and reaped, so
    a run never leaves a process behind (each test stops its own; this says which did not)."""
    import os
    import signal

    from farm.local import servers

    for pid, child in list(servers._CHILDREN.items()):
        if child.poll() is None:
            print(f"\nconftest: child {pid} still running at the end: {child.args!r:.200}")
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            child.wait(timeout=10)
        servers._CHILDREN.pop(pid, None)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No FARM_* settings from the caller's shell, and a state folder with no stack."""
    for k in list(os.environ):
        if k.startswith("FARM_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("FARM_STATE_DIR", str(tmp_path / "state"))
    return monkeypatch
