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
    assert http.delete("/v1/campaigns/" + "A" * 32).status_code == 404


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
