"""Hostile input through the real API app (real Valkey and S3, no workers): never a 5xx, every
refusal names the field, nothing is written."""

from __future__ import annotations

import io
import struct

import pytest

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


@pytest.fixture
def http(settings, tokens):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from farm.service import Farm

    app = create_app(settings, farm=Farm(settings))
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {tokens['alice']}"
        yield client


def _npy(shape: tuple, descr: str = "<f8", data: bytes = b"\0" * 64) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def test_an_array_header_claiming_80_gb_is_refused_before_allocation(http):
    resp = http.post("/v1/inputs", content=_npy((100_000, 100_000)))
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["field"] == "mask"


def test_a_truncated_or_object_array_is_refused(http):
    assert http.post("/v1/inputs", content=_npy((8, 8))).status_code == 422  # 64 bytes, not 512
    assert http.post("/v1/inputs", content=_npy((2, 2), descr="|O")).status_code == 422
    good = io.BytesIO()
    import numpy as np

    np.save(good, np.ones((64, 64), dtype=np.float32))
    assert http.post("/v1/inputs", content=good.getvalue()).status_code == 201


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"defaults": {"\\ud800": 1}, "jobs": [{"prompt": "a"}]}', "defaults"),
        ('{"jobs": [{"prompt": "cat \\udc00"}]}', "jobs[0].prompt"),
        ('{"name": "\\ud83d", "jobs": [{"prompt": "a"}]}', "name"),
    ],
)
def test_lone_surrogates_are_422_naming_the_field(http, raw, field):
    resp = http.post(
        "/v1/campaigns", content=raw.encode(), headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["field"] == field


def test_ids_that_are_paths_never_reach_storage(http):
    for path in ("/v1/campaigns/%2e%2e/resume", "/v1/campaigns/..%2f..%2fx/resume"):
        assert http.post(path).status_code == 404
    assert http.get("/v1/campaigns/%2e%2e").status_code == 404
    assert http.get("/v1/campaigns/" + "a" * 31 + "/jobs").status_code == 404
    assert http.post("/v1/campaigns/" + "A" * 32 + "/cancel").status_code == 404


def test_a_misspelt_field_is_refused_not_ignored(http):
    resp = http.post("/v1/campaigns", json={"jobs": [{"prompt": "a"}], "defualts": TINY})
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "defualts"
    resp = http.post("/v1/campaigns", json={"jobs": [{"prompt": "a", "stepz": 3}]})
    assert resp.status_code == 422 and "stepz" in resp.json()["detail"][0]["field"]


def test_one_prior_step_is_refused_at_submission(http):
    resp = http.post("/v1/jobs", json={"prompt": "a", **TINY, "prior_num_inference_steps": 1})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["field"] == "prior_num_inference_steps" and "at least 2" in detail["message"]


def _campaign_count(http) -> int:
    return len(http.get("/v1/campaigns", params={"limit": 1000}).json())


def test_jobs_and_grid_together_are_refused_naming_both_and_nothing_is_written(http):
    before = _campaign_count(http)
    body = {"jobs": [{"prompt": "a", **TINY}], "grid": {"prompts": ["b"]}, "defaults": TINY}
    resp = http.post("/v1/campaigns", json=body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["field"] == "campaign"
    assert "'jobs'" in detail["message"] and "'grid'" in detail["message"], detail
    assert _campaign_count(http) == before


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        ({"prompt": "a", **TINY, "height": 100000}, "height", "between 64 and 2048"),
        (
            {"prompt": "a", **TINY, "num_inference_steps": 10**9},
            "num_inference_steps",
            "at most 500",
        ),
        (
            {"prompt": "a", **TINY, "prior_num_inference_steps": 0},
            "prior_num_inference_steps",
            "at least 2",
        ),
    ],
)
def test_a_refusal_names_the_familys_limit_over_http(http, body, field, limit):
    resp = http.post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["field"] == field and limit in detail["message"], detail
    stated = detail["message"].split("(got")[0]
    assert "4096" not in stated and "1000" not in stated and ">= 1" not in stated, detail


@pytest.mark.parametrize("path", ["/v1/campaigns", "/v1/jobs"])
def test_a_body_that_is_not_json_is_the_documented_422(http, path):
    resp = http.post(path, content=b'{"jobs": [', headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "InvalidJob" and body["detail"][0]["field"] == "body"


def test_a_task_that_is_not_a_name_is_422_not_500(http):
    resp = http.post("/v1/jobs", json={"prompt": "a", **TINY, "task": {}})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["field"] == "task"


def test_allow_lists_every_method_the_path_takes(http):
    resp = http.request("OPTIONS", "/v1/campaigns/" + "0" * 32)
    assert resp.status_code == 405
    assert set(resp.headers["allow"].replace(" ", "").split(",")) == {"GET"}
    assert resp.json()["error"] == "MethodNotAllowed"


def test_the_openapi_document_says_what_the_api_does(http):
    doc = http.get("/openapi.json").json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    stream = paths["/v1/campaigns/{campaign_id}/jobs.jsonl"]["get"]["responses"]["200"]
    assert list(stream["content"]) == ["application/x-ndjson"]
    sheet = paths["/v1/campaigns/{campaign_id}/contact_sheet.png"]["get"]["responses"]["200"]
    assert list(sheet["content"]) == ["image/png"]
    campaign = schemas["Campaign"]
    assert len(campaign["oneOf"]) == 2 and campaign["additionalProperties"] is False
    jobs = campaign["properties"]["jobs"]["anyOf"][0]
    assert jobs["minItems"] == 1 and jobs["maxItems"] == 100_000
    k22 = next(b for b in schemas["Job"]["anyOf"] if b["title"] == "kandinsky-2.2 text2img")
    height = k22["properties"]["height"]
    assert (height["minimum"], height["maximum"], height["multipleOf"]) == (64, 2048, 64)
    prior = k22["properties"]["prior_num_inference_steps"]
    assert (prior["minimum"], prior["maximum"]) == (2, 200)
    assert "requestBody" in paths["/v1/inputs"]["post"]


def test_the_cli_sends_the_campaign_file_as_written(http, monkeypatch, tmp_path, capsys):
    """`farm submit` used to drop priority, callback_url and any misspelt key of the file."""
    from farm import cli
    from farm.client import Client

    client = Client("http://testserver", "unused")
    client.http = http
    monkeypatch.setattr(client, "close", lambda: None)
    monkeypatch.setattr(cli.campaigns, "_client", lambda settings: client)
    monkeypatch.setenv("FARM_STATE_DIR", str(tmp_path / "state"))
    good = tmp_path / "good.yaml"
    good.write_text('priority: high\njobs:\n  - {prompt: "a", height: 64, width: 64}\n')
    assert cli.main(["submit", str(good)]) == 0
    campaign_id = capsys.readouterr().out.split()[1].rstrip(":")
    assert http.get(f"/v1/campaigns/{campaign_id}").json()["priority"] == "high"
    bad = tmp_path / "bad.yaml"
    bad.write_text('defualts: {height: 64}\njobs:\n  - {prompt: "a"}\n')
    assert cli.main(["submit", str(bad)]) != 0
    assert "defualts" in capsys.readouterr().err
