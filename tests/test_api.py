"""The producer HTTP API and the Python client, against the live stack (real workers, Valkey, S3)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from farm.errors import Conflict, InvalidJob, NotFound, Unauthorized
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2, "height": 64, "width": 64}


def test_grid_campaign_end_to_end_over_http(alice, object_store):
    handle = alice.submit_campaign(
        grid={
            "prompts": ["a red cat", "قطة حمراء"],
            "seeds": [1, 2],
            "params": {"guidance_scale": [3.0, 5.0]},
        },
        defaults=FAST,
        name="grid",
    )
    assert handle.job_count == 8 and handle.created
    status = handle.wait(timeout=120)
    assert status["counts"]["done"] == 8 and status["state"] == "finished"
    assert status["images_per_second"] > 0 and status["eta_s"] == 0
    assert status["started_at"] <= status["finished_at"]
    # What it used: every image, compute seconds per stage of its family, no price set.
    used = status["usage"]
    assert used["images"] == 8 and used["cost"] is None
    assert used["compute_s"]["prior"]["kandinsky-2.2"] > 0
    assert used["compute_s"]["decoder"]["kandinsky-2.2"] > 0
    assert alice.usage()["images"] >= 8
    # Paged results: walk the cursor 3 at a time.
    pages, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = alice.request("GET", f"/v1/campaigns/{handle.id}/jobs", params=params)
        pages.append(page["jobs"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    jobs = [j for p in pages for j in p]
    assert {(j["spec"]["prompt"], j["spec"]["guidance_scale"], j["seed"]) for j in jobs} == {
        (p, g, s) for p in ("a red cat", "قطة حمراء") for g in (3.0, 5.0) for s in (1, 2)
    }
    for job in jobs:
        assert job["state"] == "done" and job["s3_key"].startswith(f"renders/alice/{handle.id}/")
        assert {"prior", "decode", "upload"} <= set(job["timings"])
        png = httpx.get(job["url"])  # the presigned URL works without credentials
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)
    # When the campaign finishes, its results file and contact sheet land beside the images.
    base = f"renders/alice/{handle.id}"
    lines = wait_until(lambda: _get_or_none(object_store, f"{base}/results.jsonl"))
    rows = [json.loads(x) for x in lines.decode().splitlines()]
    assert len(rows) == 8 and {r["job_id"] for r in rows} == {j["job_id"] for j in jobs}
    sheet = wait_until(lambda: _get_or_none(object_store, f"{base}/contact_sheet.png"))
    # Captioned tiles, rows by prompt: wider than two thumbnails, taller than two rows of them.
    width, height = Image.open(io.BytesIO(sheet)).size
    assert width > 2 * 128 and height > 2 * 128
    # The manifest is the grid itself (jobs are computed from it), and the job ids follow it.
    manifest = json.loads(object_store.get(f"{base}/manifest.json"))
    assert manifest["total"] == 8 and manifest["tenant"] == "alice"
    assert manifest["spec"]["grid"]["prompts"] == ["a red cat", "قطة حمراء"]
    assert sorted(r["job_id"] for r in rows) == sorted(f"{handle.id}-{i}" for i in range(8))
    # A finished campaign leaves no "active" marker for the feeder to find after a Redis loss.
    assert not object_store.list_keys(f"renders/_active/{handle.id}")


def _get_or_none(store, key):
    from farm.errors import NotFound as Missing

    try:
        return store.get(key)
    except Missing:
        return None


def test_filter_by_state_and_download(alice, tmp_path):
    handle = alice.submit_campaign([{"prompt": f"dl {i}", "seed": i, **FAST} for i in range(3)])
    handle.wait(timeout=60)
    assert len(list(handle.results(state="done"))) == 3
    assert list(handle.results(state="failed")) == []
    files = handle.download(tmp_path)
    assert len(files) == 3
    for f in files:
        with Image.open(f) as im:
            assert im.size == (64, 64)


def test_idempotent_resubmission(alice):
    body = [{"prompt": "once only", "seed": 4, **FAST}]
    first = alice.submit_campaign(body, idempotency_key="idem-1")
    again = alice.submit_campaign(body, idempotency_key="idem-1")
    assert again.id == first.id and not again.created and again.job_count == 1
    with pytest.raises(Conflict, match="different campaign"):
        alice.submit_campaign([{"prompt": "something else", **FAST}], idempotency_key="idem-1")
    assert [c["id"] for c in alice.campaigns()].count(first.id) == 1
    first.wait(timeout=60)


def test_single_job_endpoint_draws_and_records_a_seed(alice):
    handle = alice.submit_job({"prompt": "no seed given", **FAST})
    handle.wait(timeout=60)
    (job,) = handle.results()
    assert isinstance(job["seed"], int) and job["spec"]["seed"] == job["seed"]


def test_cancel_mid_campaign(alice, object_store):
    slow = {**FAST, "num_inference_steps": 12, "height": 128, "width": 128}
    # More jobs than the decoders take at once (messages of up to 4 renders of 8, two processes).
    victim = alice.submit_campaign(
        [{"prompt": f"cancel {i}", "seed": i, **slow} for i in range(96)]
    )
    bystander = alice.submit_campaign(
        [{"prompt": f"keep {i}", "seed": i, **FAST} for i in range(4)]
    )
    wait_until(lambda: victim.status()["counts"]["done"] >= 1, timeout=60, every=0.05)
    victim.cancel()
    status = victim.wait(timeout=120)
    counts = status["counts"]
    assert status["state"] == "cancelled"
    assert counts["cancelled"] >= 10 and counts["failed"] == 0
    assert counts["done"] + counts["cancelled"] == 96
    # A decoder running at cancel time finishes as done (its PNG exists), never as cancelled.
    jobs = list(victim.results())
    done = {j["s3_key"] for j in jobs if j["state"] == "done"}

    def pngs():
        return {
            k for k in object_store.list_keys(f"renders/alice/{victim.id}/") if k.endswith(".png")
        } - {f"renders/alice/{victim.id}/contact_sheet.png"}

    wait_until(lambda: pngs() == done, timeout=10, every=0.1)
    assert pngs() == done
    # The other campaign was not disturbed.
    assert bystander.wait(timeout=120)["counts"]["done"] == 4


def test_tenant_isolation(alice, bob, object_store):
    handle = alice.submit_campaign([{"prompt": "mine", "seed": 1, **FAST}])
    handle.wait(timeout=60)
    for call in (
        lambda: bob.campaign(handle.id),
        lambda: bob.request("GET", f"/v1/campaigns/{handle.id}/jobs"),
        lambda: bob.request("POST", f"/v1/campaigns/{handle.id}/cancel"),
        lambda: bob.request("POST", f"/v1/campaigns/{handle.id}/resume"),
        lambda: bob.request("POST", f"/v1/campaigns/{handle.id}/retry-failed"),
    ):
        with pytest.raises(NotFound):
            call()
    assert handle.id not in [c["id"] for c in bob.campaigns()]
    assert handle.id in [c["id"] for c in alice.campaigns()]
    (job,) = handle.results()
    assert job["s3_key"].startswith("renders/alice/")
    # Alice's objects are under her prefix only; bob's prefix holds none of them.
    assert any(handle.id in k for k in object_store.list_keys("renders/alice/"))
    assert not any(handle.id in k for k in object_store.list_keys("renders/bob/"))


def test_auth_required(api_url):
    assert httpx.get(f"{api_url}/v1/campaigns").status_code == 401
    bad = httpx.get(f"{api_url}/v1/campaigns", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    from farm.client import Client

    with Client(api_url, "wrong-token-0123456789") as c, pytest.raises(Unauthorized):
        c.campaigns()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"jobs": [{"prompt": "x", "height": 100}]}, "height", "multiple of 64"),
        (
            {"jobs": [{"prompt": "ok"}, {"prompt": "x", "num_inference_steps": 0}]},
            "num_inference_steps",
            "at least 1 for kandinsky-2.2",
        ),
        ({"jobs": [{"height": 64}]}, "prompt", "required"),
        ({"jobs": [{"prompt": "x", "stepz": 1}]}, "stepz", "unknown field"),
        ({"jobs": []}, "jobs", "at least one"),
        (
            {"grid": {"prompts": ["a"], "params": {"width": [64, 65]}}},
            "grid.params.width",
            "multiple of 64",
        ),
        ({"grid": {"prompts": ["a"], "seeds": "many"}}, "grid.seeds", "valid"),
        ({"defaults": {}}, "campaign", "exactly one"),
        ({"jobs": "x"}, "jobs", "valid list"),
        ({"jobs": [{"prompt": "a"}], "grid": {"prompts": ["b"]}}, "campaign", "'grid' (got both)"),
        ({"jobs": [{"prompt": "x", "height": 100000}]}, "height", "between 64 and 2048"),
    ],
)
def test_validation_errors_are_422_naming_the_field(api_url, tokens, body, field, words):
    before = httpx.get(
        f"{api_url}/v1/campaigns", headers={"Authorization": f"Bearer {tokens['alice']}"}
    ).json()
    resp = httpx.post(
        f"{api_url}/v1/campaigns", json=body, headers={"Authorization": f"Bearer {tokens['alice']}"}
    )
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["field"] == field and words in detail["message"], detail
    after = httpx.get(
        f"{api_url}/v1/campaigns", headers={"Authorization": f"Bearer {tokens['alice']}"}
    ).json()
    assert len(after) == len(before)  # nothing was created


def test_client_raises_typed_errors(alice):
    with pytest.raises(InvalidJob) as exc:
        alice.submit_campaign([{"prompt": "x", "width": 4096}])
    assert exc.value.field == "width" and "2048" in str(exc.value)
    with pytest.raises(NotFound, match="unknown campaign"):
        alice.campaign("0" * 32)
    with pytest.raises(InvalidJob, match="cursor"):
        handle = alice.submit_job({"prompt": "c", **FAST})
        alice.request("GET", f"/v1/campaigns/{handle.id}/jobs", params={"cursor": "%%%"})
    with pytest.raises(InvalidJob, match="state"):
        alice.request("GET", f"/v1/campaigns/{handle.id}/jobs", params={"state": "sleeping"})


def test_retry_failed(alice, farm, redis_client):
    handle = alice.submit_campaign([{"prompt": "flaky", "seed": 3, **FAST}])
    handle.wait(timeout=60)
    (job,) = handle.results()
    # Make it look failed (as after an error), then retry it through the API.
    from farm.domain.jobs import JobState

    farm.records.move(
        job["job_id"],
        handle.id,
        JobState.FAILED,
        tuple(JobState),
        error={"type": "X", "message": "y"},
    )
    assert handle.status()["counts"]["failed"] == 1
    assert handle.retry_failed() == 1
    status = handle.wait(timeout=60)
    assert status["counts"] == {**status["counts"], "done": 1, "failed": 0}


def test_health_and_readiness(api_url):
    assert httpx.get(f"{api_url}/healthz").json() == {"ok": True}
    ready = httpx.get(f"{api_url}/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["redis"] is True and body["s3"] is True
    assert (
        body["workers"]["prior.kandinsky-2.2"] == 1 and body["workers"]["decoder.kandinsky-3"] == 1
    )
    assert httpx.get(f"{api_url}/docs").status_code == 200
    assert "/v1/campaigns" in httpx.get(f"{api_url}/openapi.json").json()["paths"]


def test_fleet_lists_queues_with_depth_and_workers(alice):
    fleet = alice.fleet()
    queues = {q["name"]: q for q in fleet["queues"]}
    assert queues["decoder.kandinsky-3"]["depth"] >= 0 and len(queues["finalize"]["workers"]) == 2
    decoder = next(w for w in fleet["workers"] if w["stage"] == "decoder")
    assert queues["decoder.kandinsky-3"]["workers"] == [decoder["node"]]
    assert "kandinsky-2.2/decoder" in decoder["resident_parts"] and decoder["rss_bytes"] > 0
    models = alice.request("GET", "/v1/models")
    assert models["kandinsky-3"]["stages"] == ["decoder"]
    assert models["sd-1.5"]["limits"]["size_multiple"] == 8


def test_status_json_has_api_url_and_token(stack):
    status = stack.status()
    assert status["api_url"].startswith("http://127.0.0.1:") and status["token"].startswith(
        "alice-"
    )


def test_a_big_grid_waits_in_s3_pages_lazily_and_cancels_whole(alice, redis_client):
    """Jobs not fed yet have no record: they page as queued, with their specs from the
    manifest, and a cancel ends them all at once."""
    handle = alice.submit_campaign(
        grid={"prompts": ["lazy"], "seeds": list(range(3000))},
        defaults={"height": 64, "width": 64, "num_inference_steps": 2},
    )
    assert handle.job_count == 3000
    fed = int(redis_client.hget(f"farm:campaign:{handle.id}", "fed"))
    assert 0 < fed < 3000  # a few in flight, the rest in S3
    cursor = base64.urlsafe_b64encode(b"2500").decode().rstrip("=")
    page = alice.request(
        "GET", f"/v1/campaigns/{handle.id}/jobs", params={"cursor": cursor, "limit": 3}
    )
    assert [j["job_id"] for j in page["jobs"]] == [f"{handle.id}-{i}" for i in (2500, 2501, 2502)]
    assert [j["seed"] for j in page["jobs"]] == [2500, 2501, 2502]
    assert {j["state"] for j in page["jobs"]} == {"queued"}
    # The manifest streams as JSON lines, computed from the grid; so do the results.
    manifest = list(handle.stream("manifest"))
    assert len(manifest) == 3000 and manifest[2999]["spec"]["seed"] == 2999
    assert manifest[7]["job_id"] == f"{handle.id}-7"
    queued = sum(1 for _ in handle.stream("jobs", state="queued"))
    assert queued > 2000
    alice.request("POST", f"/v1/campaigns/{handle.id}/cancel")
    status = handle.wait(timeout=60)
    assert status["state"] == "cancelled" and status["counts"]["cancelled"] >= 3000 - fed - 200
    assert sum(status["counts"].values()) == 3000


def test_a_tenant_beyond_its_queued_quota_gets_429_and_nothing_is_written(farm, redis_client):
    from farm.errors import QuotaExceeded
    from farm.service import Farm

    small = Farm(farm.settings.model_copy(update={"tenant_max_queued": 10}))
    before = redis_client.zcard("farm:tenant:quota-test:campaigns")
    with pytest.raises(QuotaExceeded) as e:
        small.submit_campaign({"grid": {"prompts": ["q"], "seeds": 11}}, tenant="quota-test")
    assert e.value.http_status == 429 and "at most 10" in str(e.value)
    assert redis_client.zcard("farm:tenant:quota-test:campaigns") == before == 0
