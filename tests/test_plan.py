"""Stage balance (farm/plan.py) and `farm plan`'s gathering of figures (farm/plan_cli.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from farm import plan
from farm.cli import main
from farm.plan_cli import bench_costs, campaign_costs

W = plan.Workload(768, 50, 25)


def cost(stage, device, seconds, workload=W, source="test"):
    return plan.Cost(stage, device, seconds, workload, source)


def test_workers_are_the_rate_times_the_seconds_rounded_up():
    p = plan.plan(1.0, "kandinsky-2.2", [cost("prior", "cpu", 6.5), cost("decoder", "gpu", 0.6)], W)
    prior, decoder = p.stage("prior"), p.stage("decoder")
    assert (prior.workers, decoder.workers) == (7, 1)
    assert prior.busy == pytest.approx(6.5 / 7)
    assert decoder.busy == pytest.approx(0.6)
    # The prior's workers are the busier: it bounds, and holds 7 / 6.5 images/s.
    assert p.bound == "prior"
    assert p.capacity == pytest.approx(7 / 6.5)


def test_a_whole_number_of_workers_is_not_rounded_up_past_itself():
    # 0.1 x 30 is 3.0000000000000004 in floats: three workers, not four.
    p = plan.plan(0.1, "f", [cost("decoder", "gpu", 30.0)], W)
    assert p.stage("decoder").workers == 3
    assert p.stage("decoder").busy == pytest.approx(1.0)


def test_the_decoder_bounds_when_its_workers_are_the_busier():
    p = plan.plan(2.0, "f", [cost("prior", "gpu", 0.02), cost("decoder", "gpu", 0.9)], W)
    assert p.bound == "decoder"
    assert p.stage("decoder").workers == 2
    assert p.capacity == pytest.approx(2 / 0.9)


def test_costs_scale_to_the_workload_asked_about():
    small = plan.Workload(384, 25, 10)
    decoder = cost("decoder", "gpu", 0.8).at(small)
    # half the steps, a quarter of the pixels
    assert decoder.seconds == pytest.approx(0.8 * 0.5 * 0.25)
    prior = cost("prior", "cpu", 5.0).at(small)
    assert prior.seconds == pytest.approx(2.0)  # 10 of 25 steps; the size does not matter
    p = plan.plan(1.0, "f", [cost("decoder", "gpu", 0.8)], small)
    assert p.stage("decoder").seconds == pytest.approx(0.1)


def test_reference_figures_say_where_they_come_from():
    prior = plan.reference(
        "kandinsky-2.2", "prior", "cpu", cpu_gflops=100.0, cpu_source="measured", threads=2
    )
    assert prior.seconds == pytest.approx(8.0e12 / (100e9 * 2))
    assert "8 TFLOP" in prior.source and "measured" in prior.source and "2 cores" in prior.source
    decoder = plan.reference("kandinsky-2.2", "decoder", "gpu", cpu_gflops=1.0, cpu_source="")
    assert decoder.seconds == pytest.approx(204 / (plan.GPU_PEAK_TFLOPS * plan.GPU_MFU))
    assert "MFU" in decoder.source
    with pytest.raises(KeyError):
        plan.reference("sd-1.5", "decoder", "gpu", cpu_gflops=1.0, cpu_source="")


def test_usage_gives_seconds_per_image_per_stage():
    raw = {"images": 8.0, "prior:kandinsky-2.2:cpu": 4.0, "decoder:kandinsky-2.2:gpu": 2.0}
    got = plan.from_usage(raw, "kandinsky-2.2", W, "campaign c1")
    assert got["prior"].seconds == pytest.approx(0.5) and got["prior"].device == "cpu"
    assert got["decoder"].seconds == pytest.approx(0.25) and got["decoder"].device == "gpu"
    assert plan.from_usage({"images": 0.0, **raw} | {"images": 0.0}, "kandinsky-2.2", W, "") == {}
    # A stage that ran on both kinds has no one figure; another family's seconds are not ours.
    mixed = {**raw, "prior:kandinsky-2.2:gpu": 1.0, "decoder:sd-1.5:gpu": 9.0}
    assert set(plan.from_usage(mixed, "kandinsky-2.2", W, "")) == {"decoder"}


@pytest.mark.parametrize(
    ("summary", "want"),
    [
        # prior on the CPU, decoder on the GPU: each kind's total is one stage's
        (
            {"images": 4, "compute_s": {"prior": {"k": 3.0}, "decoder": {"k": 1.5}}, "cpu_s": 3.0, "gpu_s": 1.5},
            {"images": 4.0, "prior:k:cpu": 3.0, "decoder:k:gpu": 1.5},
        ),
        # all on one kind
        (
            {"images": 2, "compute_s": {"prior": {"k": 1.0}, "decoder": {"k": 2.0}}, "cpu_s": 3.0, "gpu_s": 0.0},
            {"images": 2.0, "prior:k:cpu": 1.0, "decoder:k:cpu": 2.0},
        ),
        # two families' priors on the CPU: ours is not the CPU's total, so it is left out
        (
            {"images": 2, "compute_s": {"prior": {"k": 1.0, "j": 1.0}, "decoder": {"k": 2.5}}, "cpu_s": 2.0, "gpu_s": 2.5},
            {"images": 2.0, "decoder:k:gpu": 2.5},
        ),
    ],
)  # fmt: skip
def test_the_usage_view_is_read_back_into_stages_and_devices(summary, want):
    assert plan.raw_from_summary(summary, "k") == want


def test_bad_figures_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="seconds"):
        cost("prior", "cpu", 0.0)
    with pytest.raises(ValueError, match="device"):
        cost("prior", "tpu", 1.0)
    with pytest.raises(ValueError, match="size"):
        plan.Workload(0, 50, 25)
    with pytest.raises(ValueError, match="rate"):
        plan.plan(0.0, "f", [cost("decoder", "gpu", 1.0)], W)
    with pytest.raises(ValueError, match="one cost per stage"):
        plan.plan(1.0, "f", [cost("decoder", "gpu", 1.0), cost("decoder", "cpu", 9.0)], W)


def test_the_rendered_prior_replicas_follow_the_ratio():
    ratio = plan.replica_ratio(cost("prior", "cpu", 10.0), cost("decoder", "gpu", 0.5))
    assert ratio == pytest.approx(20.0)
    assert plan.prior_max_replicas(4, ratio) == 80
    assert plan.prior_max_replicas(0, ratio) == 1  # a prior stays: it runs finalize too
    top, why = plan.prior_replicas("kandinsky-2.2", 2, 4)
    seconds = 8.0e12 / (plan.CPU_CORE_GFLOPS["float32"] * 1e9 * 2)
    decoder = 204 / (plan.GPU_PEAK_TFLOPS * plan.GPU_MFU)
    assert top == -(-4 * seconds // decoder)
    assert f"maxReplicaCount {top}" in why


def test_the_checked_in_manifest_takes_its_prior_bound_from_the_plan():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "infra" / "k8s" / "base"
    docs = list(yaml.safe_load_all((root / "prior-kandinsky-2-2.yaml").read_text()))
    scaled = next(d for d in docs if d and d["kind"] == "ScaledObject")
    decoders = next(
        d
        for d in yaml.safe_load_all((root / "decoder-kandinsky-2-2.yaml").read_text())
        if d and d["kind"] == "ScaledObject"
    )["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] == plan.prior_replicas("kandinsky-2.2", 2, decoders)[0]


def test_bench_files_of_both_kinds_are_read(tmp_path):
    farm_bench = {
        "date": "2026-12-04",
        "machine": {"cpus": 2, "device": "cpu"},
        "params": {"model": "kandinsky-2.2", "size": 128, "steps": 20, "prior_steps": 10},
        "farm": {"prior_ms": 7.5, "decoder_ms": 168.0},
    }
    (tmp_path / "bench.json").write_text(json.dumps(farm_bench))
    got = {c.stage: c for c in bench_costs(tmp_path / "bench.json", "kandinsky-2.2")}
    assert got["decoder"].seconds == pytest.approx(0.168)
    assert got["decoder"].workload == plan.Workload(128, 20, 10)
    assert got["prior"].device == "cpu" and "bench.json" in got["prior"].source
    rows = {
        "plan_costs": [
            {"family": "kandinsky-2.2", "stage": "decoder", "device": "gpu", "seconds": 0.4,
             "size": 768, "steps": 50, "prior_steps": 25, "source": "H200, 32 jobs"},
            {"family": "sd-1.5", "stage": "decoder", "device": "gpu", "seconds": 0.1,
             "size": 512, "steps": 50, "prior_steps": 25},
        ]
    }  # fmt: skip
    (tmp_path / "gpu.json").write_text(json.dumps(rows))
    (only,) = bench_costs(tmp_path / "gpu.json", "kandinsky-2.2")
    assert only.device == "gpu" and "H200, 32 jobs" in only.source


def test_a_campaigns_usage_is_read_through_the_api(monkeypatch):
    summary = {
        "images": 4,
        "compute_s": {"prior": {"kandinsky-2.2": 2.0}, "decoder": {"kandinsky-2.2": 6.0}},
        "cpu_s": 8.0,
        "gpu_s": 0.0,
    }
    spec = {"height": 64, "width": 64, "num_inference_steps": 4, "prior_num_inference_steps": 2}

    class Handle:
        def status(self):
            return {"usage": summary}

        def results(self, page_size=500):
            yield {"spec": spec}

    class FakeClient:
        @classmethod
        def from_settings(cls, settings):
            return cls()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def campaign(self, cid):
            assert cid == "c1"
            return Handle()

    import farm.client

    monkeypatch.setattr(farm.client, "Client", FakeClient)
    settings = SimpleNamespace(with_stack=lambda: None)
    got = {c.stage: c for c in campaign_costs(settings, "c1", "kandinsky-2.2")}
    assert got["prior"].seconds == pytest.approx(0.5)
    assert got["decoder"].seconds == pytest.approx(1.5)
    assert got["decoder"].workload == plan.Workload(64, 4, 2)
    assert "campaign c1" in got["decoder"].source


def test_farm_plan_prints_the_balance_and_its_sources(capsys, tmp_path):
    assert main(["plan", "--rate", "1", "--family", "kandinsky-2.2", "--cpu-gflops", "100"]) == 0
    out = capsys.readouterr().out
    assert "prior    on cpu:   80 workers" in out  # 8 TFLOP at 100 GFLOP/s: 80 s an image
    assert "decoder  on gpu:    1 worker" in out
    assert "bound: prior" in out and "given with --cpu-gflops" in out
    assert "other placement: prior on gpu" in out
    rows = {
        "plan_costs": [
            {"stage": "decoder", "device": "gpu", "seconds": 0.5, "size": 768, "steps": 50,
             "prior_steps": 25},
            {"stage": "prior", "device": "gpu", "seconds": 0.05, "size": 768, "steps": 50,
             "prior_steps": 25},
        ]
    }  # fmt: skip
    (tmp_path / "gpu.json").write_text(json.dumps(rows))
    argv = ["plan", "--rate", "4", "--bench", str(tmp_path / "gpu.json"), "--json"]
    assert main([*argv, "--cpu-gflops", "100"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["bound"] == "decoder"
    assert [(s["stage"], s["device"], s["workers"]) for s in got["stages"]] == [
        ("prior", "gpu", 1),
        ("decoder", "gpu", 2),
    ]
    assert got["prior_per_decoder"] == pytest.approx(0.1)


def test_farm_plan_refuses_what_it_cannot_plan(capsys):
    assert main(["plan", "--rate", "1", "--family", "sd-1.5"]) == 2
    assert "no figure for the decoder of sd-1.5 on gpu" in capsys.readouterr().err
    assert main(["plan", "--rate", "-1", "--cpu-gflops", "100"]) == 2
    assert "rate must be a positive number" in capsys.readouterr().err
    assert main(["plan", "--rate", "1", "--size", "0", "--cpu-gflops", "100"]) == 2
    assert "size must be at least 1" in capsys.readouterr().err
    assert main(["plan", "--rate", "1", "--family", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
