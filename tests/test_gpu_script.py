"""The GPU script (bench/gpu_run.sh, gpu_decoder.py, gpu_farm.py, gpu_report.py, gpu_wheels.sh)
in its CPU smoke mode, so that it is known to work the day a GPU is at hand."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import gpu_decoder  # noqa: E402
import gpu_farm  # noqa: E402
import gpu_report  # noqa: E402

SMOKE_DECODER = ["--tiny", "--device", "cpu", "--dtype", "float32", "--size", "64", "--steps",
                 "2", "--images", "4", "--batch", "2"]  # fmt: skip


def test_the_decoder_bench_reports_all_four_figures(tmp_path):
    out = tmp_path / "decoder.json"
    got = gpu_decoder.run([*SMOKE_DECODER, "--check-pixels", "--json", str(out)])
    assert json.loads(out.read_text())["farm_over_bare"] == got["farm_over_bare"]
    for path in ("bare_batched", "guides_loop", "farm_decoder_path"):
        assert got[path]["images_per_s"] > 0
        assert 0 < got[path]["mfu"] < 1
    # Counted by torch over one image: a UNet step at 2 steps and the once-per-image part.
    assert got["tflop_per_image"]["counted"]["unet_step"] > 0
    assert got["tflop_per_image"]["counted"]["per_image"] > 0
    assert set(got["goals"]) == {
        "farm >= 90% of bare batched",
        "farm >= 2x the guides' loop",
        "MFU >= 40%",
    }
    assert got["pixels_max_diff_255"]["channels_last"] <= 1  # within 1/255 of eager
    table = gpu_report.decoder_table(got)
    assert "the farm's decoder path" in table and "MFU" in table


def test_the_farm_runs_in_one_process_when_the_stack_cannot_come_along(tmp_path):
    got = gpu_farm.main(["--smoke", "--mode", "inproc", "--out", str(tmp_path),
                         "--prior-devices", "cpu"])  # fmt: skip
    assert got["mode"] == "inproc"
    (placement,) = got["placements"].values()
    assert placement["done"] == placement["jobs"] == 4
    assert placement["prior_s_per_job"] > 0 and placement["decoder_s_per_image"] > 0
    table = (tmp_path / "gpu_table.md").read_text()
    assert "the decoder worker's code path in one process" in table
    assert "smoke run" in table
    assert json.loads((tmp_path / "gpu_farm.json").read_text())["mode"] == "inproc"


@pytest.mark.slow
def test_gpu_run_sh_runs_the_whole_stack_in_smoke_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["PYTHON"] = sys.executable
    # The carried wheels are for the GPU machine's Python 3.12; this venv has it all.
    env["GPU_WHEELS"] = str(tmp_path / "no-wheels")
    out = subprocess.run(
        ["bash", str(BENCH / "gpu_run.sh"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    got = json.loads((tmp_path / "gpu_farm.json").read_text())
    assert got["mode"] == "stack", got.get("why_mode")
    assert len(got["placements"]) == 2
    for label, r in got["placements"].items():
        assert r.get("error") is None, r["error"]
        assert r["done"] == r["jobs"] == 4, label
        assert r["load_s"] > 0 and r["prior_s_per_job"] > 0 and r["decoder_busy"] > 0
        assert r["decoder_queue_wait_ms"] is not None
    assert got["decoder_bench"]["farm_decoder_path"]["images_per_s"] > 0
    table = (tmp_path / "gpu_table.md").read_text()
    assert "the whole stack" in table and "bare batched decoder" in table
    # What it measured is a `farm plan` source.
    from farm.cli import main

    code = main(["plan", "--rate", "1", "--size", "64", "--steps", "2", "--prior-steps", "2",
                 "--bench", str(tmp_path / "gpu_farm.json"), "--json"])  # fmt: skip
    assert code == 0


def test_the_report_says_whether_the_decoder_was_starved():
    result = {
        "date": "2027-01-01 10:00",
        "device": "NVIDIA H200",
        "cpus": 16,
        "mode": "stack",
        "why_mode": "everything came along",
        "settings": {"stand_in": "full", "device": "cuda", "dtype": "float16"},
        "params": {"jobs": 32, "size": 768, "steps": 50, "prior_steps": 25},
        "placements": {
            "prior on cuda (decoder's)": {"device": "cuda", "dtype": "float16", "done": 32,
                "jobs": 32, "images_per_s": 2.0, "gpu_busy": 0.95, "decoder_busy": 0.93,
                "decoder_queue_wait_ms": 4000.0, "prior_s_per_job": 0.03,
                "decoder_s_per_image": 0.45},
            "prior on cpu": {"device": "cpu", "dtype": "bfloat16", "done": 12, "jobs": 32,
                "images_per_s": 0.2, "gpu_busy": 0.1, "decoder_busy": 0.09,
                "decoder_queue_wait_ms": 20.0, "prior_s_per_job": 4.9,
                "decoder_s_per_image": 0.46},
        },
    }  # fmt: skip
    table = gpu_report.farm_table(result)
    assert "prior on cuda (decoder's): the decoder was kept busy." in table
    assert "prior on cpu: the decoder was starved by the prior." in table
    assert "| jobs done / asked | 32 / 32 | 12 / 32 |" in table
    rows = gpu_report.plan_costs(result)
    assert [(r["stage"], r["device"], r["seconds"]) for r in rows] == [
        ("decoder", "gpu", 0.45),
        ("prior", "gpu", 0.03),
        ("prior", "cpu", 4.9),
    ]


@pytest.mark.gpu
def test_the_decoder_bench_on_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    got = gpu_decoder.run(["--tiny", "--device", "cuda", "--dtype", "float16", "--size", "64",
                           "--steps", "2", "--images", "4", "--batch", "2"])  # fmt: skip
    assert got["vram_peak_gib"] > 0 and got["device"] != "cuda"


# -- the wheels: everything the farm imports reaches the GPU machine ---------------------------


def _wheels(flag: str) -> list[str]:
    out = subprocess.run(["bash", str(BENCH / "gpu_wheels.sh"), flag], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return out.split()


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# Imported only inside the functions that use them, which the GPU run never calls: not carried.
OFF_GPU = {"pyarrow": "dataset export and Parquet prompt files (farm export, farm submit)"}


def _imported_modules() -> set[str]:
    names = set()
    files = [*ROOT.glob("farm/**/*.py"), *ROOT.glob("workers/**/*.py"), *ROOT.glob("api/**/*.py")]
    files += [BENCH / "gpu_decoder.py", BENCH / "gpu_farm.py", BENCH / "gpu_probe.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    local = {"farm", "workers", "api", "gpu_report", "gpu_probe", "__future__", *OFF_GPU}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def test_what_stays_off_the_gpu_machine_is_never_imported_at_module_level():
    # A module-level import would break `farm` itself there, whatever command runs.
    files = [*ROOT.glob("farm/**/*.py"), *ROOT.glob("workers/**/*.py"), *ROOT.glob("api/**/*.py")]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                tops = {node.module.split(".")[0]}
            else:
                continue
            assert not tops & set(OFF_GPU), f"{path.relative_to(ROOT)} imports {tops} at the top"


def test_every_carried_wheel_is_pinned_at_its_version_in_requirements():
    # A fresh install (CI) resolves what is not pinned to the index's newest: a carried
    # package left unpinned drifts from gpu_wheels.sh the day its next release appears.
    pins = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        spec = line.split("#")[0].strip()
        if "==" in spec:
            name, version = spec.split("==")
            pins[_norm(name.split("[")[0])] = version
    for spec in _wheels("--list"):
        name, version = spec.split("==")
        assert pins.get(_norm(name)) == version, f"requirements.txt must pin {name}=={version}"


def test_the_wheels_cover_every_import_and_requirement_at_the_installed_versions():
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    carry = dict(spec.split("==") for spec in _wheels("--list"))
    carry = {_norm(k): v for k, v in carry.items()}
    there = {_norm(n) for n in _wheels("--present")} | set(carry)
    # Run there what ran here.
    for name, version in carry.items():
        assert md.version(name) == version, f"{name}: gpu_wheels.sh pins {version}"
    dists = md.packages_distributions()
    for module in sorted(_imported_modules()):
        owners = {_norm(d) for d in dists.get(module, [])}
        assert owners, f"import {module}: no installed distribution provides it"
        assert owners & there, f"import {module} ({owners}) does not reach the GPU machine"
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
           "sys_platform": "linux", "platform_system": "Linux", "extra": ""}  # fmt: skip
    for name in carry:
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            assert _norm(req.name) in there, f"{name} needs {req.name}, which is not carried"
