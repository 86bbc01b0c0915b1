"""The benchmarks run (CI does not time them; these keep them from rotting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_decoder_bench_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    res = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "gpu_decoder.py"), "--tiny", "--device", "cpu",
            "--dtype", "float32", "--size", "64", "--steps", "2", "--images", "4", "--batch", "2",
            "--json", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    for name in ("bare_batched", "guides_loop", "farm_decoder_path"):
        assert result[name]["images_per_s"] > 0 and result[name]["mfu"] >= 0


@pytest.mark.slow
def test_farm_bench_runs_baseline_farm_baseline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_STATE_DIR"] = str(tmp_path / "unused")
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable, "-m", "farm.cli", "bench", "--jobs", "4", "--size", "64", "--steps", "2",
            "--prior-steps", "2", "--singles", "1", "--json", str(out),
        ],
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["baseline"]) == 2 and result["ratio"] > 0
    farm = result["farm"]
    assert farm["images_per_s"] > 0 and farm["latency_p50_ms"] > 0 and 0 < farm["batch_fill"] <= 1
    assert "| images/s |" in res.stdout
    assert not (tmp_path / "unused" / "stack.json").exists()  # its own stack, stopped


@pytest.mark.slow
def test_a_million_job_grid_is_accepted_without_growing_redis_or_the_api(tmp_path):
    """Issue 10's acceptance, measured by the bench in the repo (its own servers and API)."""
    out = tmp_path / "million.json"
    subprocess.run(
        [sys.executable, "bench/million.py", "--json", str(out)],
        check=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    r = json.loads(out.read_text())
    assert r["jobs"] == 1_000_000 and r["accept_s"] <= 60
    assert r["redis_bytes_per_job"] <= 200 and r["api_peak_rss_growth_mib"] <= 200
    assert r["status_ms_p50"] <= 50
    assert r["ten_million_status"] == 422 and r["ten_million_refused_s"] <= 1
    assert r["ten_million_rss_growth_mib"] <= 5
