"""The Python clients: where `Client()` finds the API, the typed results (pydantic, still dicts),
`images()` fetching lazily, and `AsyncClient` against the real stack."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json

import httpx
import pytest
from PIL import Image

from farm.async_client import AsyncClient
from farm.client import Client
from farm.client_models import CampaignStatus, JobStatus
from farm.errors import ConfigError, InvalidJob, NotFound, ServiceUnavailable
from farm.local.servers import free_port

FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2, "height": 64, "width": 64}
CID = "c" * 32
STATUS = {
    "id": CID,
    "name": "fake",
    "priority": "normal",
    "state": "finished",
    "waiting_reason": None,
    "total": 5,
    "counts": {"queued": 0, "prior": 0, "decoding": 0, "done": 5, "failed": 0, "cancelled": 0},
    "images_per_second": 1.5,
    "eta_s": 0.0,
    "created_at": 1.0,
    "started_at": 2.0,
    "finished_at": 3.0,
    "usage": {"images": 5, "compute_s": {}, "cost": None},
    "webhook": None,
}


@pytest.fixture
def env(env, tmp_path):
    """conftest's env (no FARM_* settings, no stack), with its state folder made: the folder."""
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


def _seen_by(*args: str) -> dict:
    """The URL and token of the request ``Client(*args)`` sends (to a fake API)."""
    seen = {}

    def api(request: httpx.Request) -> httpx.Response:
        seen.update(url=str(request.url), auth=request.headers["authorization"])
        return httpx.Response(200, json={"tenant": "t", "campaigns": 0, "images": 0})

    with Client(*args, transport=httpx.MockTransport(api)) as client:
        client.usage()
    return seen


def _write_stack(state, url: str, token: str) -> None:
    (state / "stack.json").write_text(
        json.dumps(
            {
                "api_url": url,
                "token": token,
                "redis_url": "redis://127.0.0.1:1/0",
                "s3_endpoint": "http://127.0.0.1:2",
                "s3_access_key": "k",
                "s3_secret_key": "s",
            }
        )
    )


def test_client_reads_env_then_the_local_stack_and_arguments_win(env, monkeypatch):
    with pytest.raises(ConfigError, match="run `farm up`.*FARM_API_URL|FARM_API_URL.*farm up"):
        Client()
    monkeypatch.setenv("FARM_API_URL", "http://env.test:1/")
    monkeypatch.setenv("FARM_API_TOKEN", "env-token")
    assert _seen_by() == {"url": "http://env.test:1/v1/usage", "auth": "Bearer env-token"}
    assert _seen_by("http://arg.test", "arg-token")["auth"] == "Bearer arg-token"
    with Client(token="arg-token") as client:
        assert str(client.http.base_url) == "http://env.test:1"
    # No env: the running local stack's URL and token, as `farm status --json` prints them.
    monkeypatch.delenv("FARM_API_URL")
    monkeypatch.delenv("FARM_API_TOKEN")
    _write_stack(env, "http://stack.test:2", "stack-token")
    assert _seen_by() == {"url": "http://stack.test:2/v1/usage", "auth": "Bearer stack-token"}
    assert _seen_by("http://stack.test:2/")["auth"] == "Bearer stack-token"
    # The stack's token is never sent to another host: a URL alone needs FARM_API_TOKEN.
    with pytest.raises(ConfigError, match="no API token for http://other.test.*FARM_API_TOKEN"):
        Client("http://other.test")
    from farm.settings import Settings

    with Client() as client, Client.from_settings(Settings.load()) as made:
        assert "stack-token" not in repr(client) and "stack.test:2" in repr(client)
        assert str(made.http.base_url) == "http://stack.test:2"
    made_async = AsyncClient.from_settings(Settings.load())
    assert str(made_async.http.base_url) == "http://stack.test:2"
    asyncio.run(made_async.aclose())


def test_async_client_resolves_the_same_way(env, monkeypatch):
    with pytest.raises(ConfigError, match="farm up"):
        AsyncClient()
    monkeypatch.setenv("FARM_API_URL", "http://env.test:1")
    monkeypatch.setenv("FARM_API_TOKEN", "env-token")
    client = AsyncClient()
    assert client.http.headers["authorization"] == "Bearer env-token"
    assert "env-token" not in repr(client)
    asyncio.run(client.aclose())


def test_models_are_typed_serialise_to_dicts_and_read_as_dicts():
    st = CampaignStatus.model_validate({**STATUS, "added_later": 1})
    assert st.counts["done"] == 5 and st.finished and st.images_per_second == 1.5
    # Serialisable: the dict (with a field the server added later kept) and JSON.
    assert st.model_dump() == {**STATUS, "added_later": 1}
    assert json.loads(st.model_dump_json()) == {**STATUS, "added_later": 1}
    # Read as the dicts the client returned before.
    assert st["counts"]["done"] == 5 and st["added_later"] == 1 and st.get("nope", 7) == 7
    assert "usage" in st and "nope" not in st and st == {**STATUS, "added_later": 1}
    assert dict(st)["state"] == "finished" and set(st) == set(STATUS) | {"added_later"}
    with pytest.raises(KeyError):
        st["model_dump"]  # methods are not keys
    running = CampaignStatus.model_validate({**STATUS, "counts": {**STATUS["counts"], "done": 4}})
    assert not running.finished
    job = JobStatus.model_validate(_job(0, ["http://s3.test/0.png"]))
    assert job.seed == 0 and job.prompt == "p0" and job["spec"]["prompt"] == "p0"
    assert json.loads(job.model_dump_json())["urls"] == ["http://s3.test/0.png"]
    with pytest.raises(ValueError, match="job_id"):
        JobStatus.model_validate({"state": "done"})


def _job(i: int, urls: list[str]) -> dict:
    return {
        "job_id": f"{CID}-{i}",
        "state": "done",
        "spec": {"prompt": f"p{i}", "seed": i},
        "seed": i,
        "s3_key": f"renders/t/{CID}/{i}.png",
        "s3_keys": [f"renders/t/{CID}/{i}-{n}.png" for n in range(len(urls))],
        "url": urls[0],
        "urls": urls,
        "timings": {},
        "error": None,
    }


def _png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (shade, shade, shade)).save(buf, format="PNG")
    return buf.getvalue()


def _fake_farm(requests: list[str], image_status: int = 200):
    """A farm API with five done jobs (job 2 made two images) and their images, on S3."""
    urls = {i: [f"http://s3.test/{i}.png"] for i in range(5)}
    urls[2] = ["http://s3.test/2a.png", "http://s3.test/2b.png"]
    jobs = [_job(i, urls[i]) for i in range(5)]
    shades = {u: 10 * n for n, u in enumerate(u for i in range(5) for u in urls[i])}

    def handle(request: httpx.Request) -> httpx.Response:
        url = request.url
        requests.append(f"{url.host}{url.path}" + (f"?{url.query.decode()}" if url.query else ""))
        if url.host == "s3.test":
            return httpx.Response(image_status, content=_png(shades[str(url)]))
        if url.path == f"/v1/campaigns/{CID}":
            return httpx.Response(200, json=STATUS)
        start = int(request.url.params.get("cursor") or 0)
        limit = int(request.url.params["limit"])
        nxt = str(start + limit) if start + limit < len(jobs) else None
        return httpx.Response(200, json={"jobs": jobs[start : start + limit], "next_cursor": nxt})

    return handle


def test_images_are_fetched_lazily_page_by_page():
    requests: list[str] = []
    with Client("http://api.test", "t", transport=httpx.MockTransport(_fake_farm(requests))) as c:
        handle = c.campaign(CID)
        assert isinstance(handle.status(), CampaignStatus)
        requests.clear()
        images = handle.images(page_size=2)
        assert requests == []  # nothing until iterated
        job, image = next(images)
        assert requests == [f"api.test/v1/campaigns/{CID}/jobs?limit=2&state=done", "s3.test/0.png"]
        assert isinstance(job, JobStatus) and job.seed == 0 and image.size == (4, 4)
        next(images)
        assert requests[2:] == ["s3.test/1.png"]  # the page is in hand: one GET, the image
        rest = list(images)
        assert requests[3] == f"api.test/v1/campaigns/{CID}/jobs?limit=2&state=done&cursor=2"
        # Job 2 made two images: both come, each with its job.
        assert [j.seed for j, _ in rest] == [2, 2, 3, 4]
        assert [im.getpixel((0, 0))[0] for _, im in rest] == [20, 30, 40, 50]
        assert len(requests) == 3 + 2 + 2 + 1 + 1  # pages 2 and 3, five more images
        with pytest.raises(InvalidJob, match="page_size: must be between 1 and 1000"):
            next(handle.images(page_size=0))


def test_an_image_s3_refuses_names_the_job_and_what_to_do():
    fake = _fake_farm([], image_status=403)
    with Client("http://api.test", "t", transport=httpx.MockTransport(fake)) as c:
        handle = c.campaign(CID)
        with pytest.raises(ServiceUnavailable, match=f"job {CID}-0: HTTP 403.*15 minutes"):
            next(handle.images())
    fake = _fake_farm([], image_status=404)
    with Client("http://api.test", "t", transport=httpx.MockTransport(fake)) as c:
        with pytest.raises(NotFound, match="gone from S3.*farm resume"):
            next(c.campaign(CID).images())


def test_async_images_are_lazy_too():
    requests: list[str] = []
    fake = _fake_farm(requests)

    async def main() -> list[int]:
        async with AsyncClient("http://api.test", "t", transport=httpx.MockTransport(fake)) as c:
            handle = await c.campaign(CID)
            requests.clear()
            images = handle.images(page_size=2)
            job, _ = await anext(images)
            assert len(requests) == 2 and job.seed == 0
            return [j.seed async for j, _ in images]

    assert asyncio.run(main()) == [1, 2, 2, 3, 4]


def test_progress_bar_is_tqdm_auto_and_async_wait_shares_the_rate():
    from tqdm.auto import tqdm

    from farm.progress import _bar, await_campaign

    assert issubclass(_bar(), tqdm)  # a Jupyter widget where ipywidgets is, text elsewhere
    done = iter([0, 3, 5])

    async def status():
        return {"counts": {"done": next(done), "failed": 0, "cancelled": 0}}

    st = asyncio.run(await_campaign(CID, status, 5, timeout=None, progress=False, poll_s=0))
    assert st["counts"]["done"] == 5
    stalled = iter(lambda: {"counts": {"done": 1, "failed": 0, "cancelled": 0}}, None)

    async def never():
        return next(stalled)

    with pytest.raises(TimeoutError, match=f"campaign {CID}.*after 0.05s"):
        asyncio.run(await_campaign(CID, never, 5, timeout=0.05, progress=False, poll_s=0.01))


def test_async_client_unreachable_names_the_fix(env):
    async def main():
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", "t") as c:
            await c.usage()

    with pytest.raises(ServiceUnavailable, match="unreachable.*farm up.*FARM_API_URL"):
        asyncio.run(main())


@pytest.mark.slow
def test_async_client_submit_wait_images_against_the_stack(api_url, tokens, tmp_path):
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    async def main():
        async with AsyncClient(api_url, tokens["alice"]) as client:
            client.http.event_hooks["request"].append(count)
            client.files.event_hooks["request"].append(count)
            campaign = await client.submit_campaign(
                grid={"prompts": ["a red cat", "قطة حمراء"], "seeds": [1, 2]},
                defaults=FAST,
                name="async",
            )
            assert campaign.job_count == 4 and campaign.created
            status = await campaign.wait(timeout=120, progress=True)
            assert isinstance(status, CampaignStatus) and status.counts["done"] == 4
            assert status.state == "finished" and status["name"] == "async"
            # Lazily: the first image costs one page of jobs and one GET of its image.
            sent.clear()
            images = campaign.images(page_size=2)
            job, image = await anext(images)
            assert sent[0] == f"/v1/campaigns/{campaign.id}/jobs" and len(sent) == 2
            assert sent[1].endswith(job.s3_key)  # the presigned GET, straight to S3
            got = [(job, image)] + [pair async for pair in images]
            assert len(got) == 4 and all(im.size == (64, 64) for _, im in got)
            assert {(j.prompt, j.seed) for j, _ in got} == {
                (p, s) for p in ("a red cat", "قطة حمراء") for s in (1, 2)
            }
            assert len(sent) == 2 + 1 + 3  # a second page, three more images
            # The same surface as the sync client.
            assert [j.job_id async for j in campaign.results(state="failed")] == []
            lines = [line async for line in campaign.stream("manifest")]
            assert [line["index"] for line in lines] == [0, 1, 2, 3]
            assert campaign.id in [c.id for c in await client.campaigns()]
            assert (await client.usage())["images"] >= 4
            again = await client.campaign(campaign.id)
            got = await again.download_all(tmp_path / "dl")
            assert len(got["images"]) == 4 and got["results"].stat().st_size > 0
            if importlib.util.find_spec("farm.export") is not None:  # helper module, optional
                stats = await again.export(tmp_path / "dataset", shard_size=2)
                assert stats.complete and (tmp_path / "dataset" / "_stats.json").is_file()
            with pytest.raises(NotFound, match="unknown campaign"):
                await client.campaign("0" * 32)
            with pytest.raises(InvalidJob, match="height"):
                await client.submit_job({"prompt": "x", **FAST, "height": 100})

    asyncio.run(main())
