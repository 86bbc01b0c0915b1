"""Usage summaries and cost estimates (no IO)."""

from __future__ import annotations

import pytest

from farm.domain.usage import summary, usage_field


def test_usage_fields_name_stage_family_and_device():
    assert usage_field("decoder", "kandinsky-2.2", "cuda:1") == "decoder:kandinsky-2.2:gpu"
    assert usage_field("prior", "kandinsky-2.2", "cpu") == "prior:kandinsky-2.2:cpu"


def test_summary_adds_campaigns_and_prices_each_kind_of_compute():
    a = {"images": 10.0, "prior:kandinsky-2.2:cpu": 36.0, "decoder:kandinsky-2.2:gpu": 1800.0}
    b = {"images": 2.0, "decoder:kandinsky-3:gpu": 1800.0}
    out = summary([a, b], {"cpu": 0.5, "gpu": 2.0}, "EUR")
    assert out["images"] == 12
    assert out["compute_s"] == {
        "prior": {"kandinsky-2.2": 36.0},
        "decoder": {"kandinsky-2.2": 1800.0, "kandinsky-3": 1800.0},
    }
    assert out["gpu_s"] == 3600.0 and out["cpu_s"] == 36.0
    assert out["cost"] == pytest.approx(2.0 + 0.5 * 36 / 3600)
    assert out["currency"] == "EUR"


def test_no_prices_no_cost():
    out = summary([{"images": 1.0, "decoder:sd-1.5:cpu": 3.0}], {"cpu": 0.0, "gpu": 0.0}, "USD")
    assert out["cost"] is None and out["currency"] is None and out["images"] == 1
