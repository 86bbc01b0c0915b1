"""Families' parts: deterministic tiny builds, verification that names what is wrong, loading,
and the worker's pipelines built from the registry (LRU of families)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from farm.errors import ModelError
from farm.families import REGISTRY, get
from farm.families.loading import load, verify
from farm.families.tiny import build_k22_decoder, build_k22_prior, is_tiny
from farm.local.models import build_tiny, rows
from farm.local.processes import worker_pool
from farm.settings import Settings

K22 = get("kandinsky-2.2")


def _digest(folder):
    h = hashlib.sha256()
    # README.md is the model card naming the prior by absolute path: it differs by location.
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory):
    """Settings whose tiny Kandinsky 2.2, 2.1 and 3 parts are built."""
    s = Settings(state_dir=tmp_path_factory.mktemp("state"))
    build_tiny(s, ["kandinsky-2.2", "kandinsky-2.1", "kandinsky-3"])
    return s


def test_tiny_build_is_deterministic(tiny_settings, tmp_path):
    build_k22_prior(tmp_path / "prior")
    build_k22_decoder(tmp_path / "decoder")
    for part in ("prior", "decoder"):
        assert is_tiny(tmp_path / part)
        assert _digest(tiny_settings.tiny_dir / part) == _digest(tmp_path / part)


def test_every_part_of_built_families_verifies(tiny_settings):
    for name in ("kandinsky-2.2", "kandinsky-2.1", "kandinsky-3"):
        family = get(name)
        for part in family.parts:
            verify(family, part, tiny_settings.location(part), tiny=True)
    listed = rows(tiny_settings, ["kandinsky-2.2", "sd-1.5"])
    assert {r["family"] for r in listed if not r["ok"]} == {"sd-1.5"}  # not built


def test_missing_part_names_family_part_place_and_fix(tiny_settings, tmp_path):
    part = get("sd-1.5").part("sd15")
    with pytest.raises(ModelError) as exc:
        verify(get("sd-1.5"), part, str(tmp_path / "nope"), tiny=True)
    msg = str(exc.value)
    for words in ("sd-1.5", "'sd15'", "FARM_SD15_MODEL", str(tmp_path / "nope"), "no such folder"):
        assert words in msg
    assert "farm models build sd-1.5" in msg


def test_broken_part_is_refused(tiny_settings, tmp_path):
    broken = tmp_path / "decoder"
    shutil.copytree(tiny_settings.tiny_dir / "decoder", broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelError, match="component unet/ is missing"):
        verify(K22, K22.part("decoder"), str(broken))
    shutil.copytree(tiny_settings.tiny_dir / "decoder" / "unet", broken / "unet")
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelError, match="unet/ has no weights file"):
        verify(K22, K22.part("decoder"), str(broken))


def test_wrong_part_is_refused(tiny_settings):
    with pytest.raises(ModelError, match="holds a KandinskyV22PriorPipeline pipeline"):
        verify(K22, K22.part("decoder"), str(tiny_settings.tiny_dir / "prior"))


def test_uncached_hub_id_offline_says_how_to_fetch(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    part = K22.part("prior")
    with pytest.raises(ModelError) as exc:
        verify(K22, part, part.hub_id)
    assert "not in the Hugging Face cache" in str(exc.value)
    assert "farm models fetch kandinsky-2.2" in str(exc.value)


def test_tiny_part_loads_in_the_requested_dtype(tiny_settings):
    import torch

    part = K22.part("decoder")
    pipe = load(part, tiny_settings.location(part), dtype="bfloat16")
    assert pipe.unet.dtype == torch.bfloat16


def test_worker_builds_each_tasks_pipeline_from_the_registry(tiny_settings):
    """Every (family, task) of the built families resolves to the class the family declares,
    derived over loaded weights (no second load of the same part)."""
    from workers.context import Models

    for stage in ("prior", "decoder"):
        families = [
            f for f in ("kandinsky-2.2", "kandinsky-2.1", "kandinsky-3") if stage in get(f).stages
        ]
        models = Models(tiny_settings, stage, families)
        for name in families:
            for task, spec in get(name).tasks.items():
                pipe_spec = spec.prior if stage == "prior" else spec.decoder
                if pipe_spec is None:
                    continue
                pipe = models.pipeline(name, task)
                part = get(name).part(pipe_spec.part)
                expected = pipe_spec.cls if pipe_spec.cls != part.load_as else part.load_as
                assert type(pipe).__name__ == expected, (name, task, stage)
        assert models.loads == len(families)  # one load per family, tasks share it
        if stage == "decoder":
            img2img = models.pipeline("kandinsky-2.2", "img2img")
            assert img2img.unet is models.pipeline("kandinsky-2.2", "text2img").unet


def test_worker_keeps_at_most_resident_families(tiny_settings):
    from workers.context import Models

    models = Models(tiny_settings, "decoder", ["kandinsky-2.2", "kandinsky-3"], capacity=1)
    models.pipeline("kandinsky-2.2", "text2img")
    models.pipeline("kandinsky-2.2", "img2img")
    assert models.resident_parts() == [
        "kandinsky-2.2/decoder",
        "kandinsky-2.2/inpaint",
        "kandinsky-2.2/controlnet",
    ]
    models.pipeline("kandinsky-3", "text2img")
    assert models.resident_parts() == ["kandinsky-3/kandinsky3"]
    assert (models.loads, models.evictions) == (2, 1)
    with pytest.raises(ModelError, match="does not serve sd-1.5"):
        models.pipeline("sd-1.5", "text2img")


def test_registry_hub_ids_are_unique_per_weights():
    seen = {}
    for family in REGISTRY.values():
        for part in family.parts:
            seen.setdefault(part.hub_id, set()).add(part.setting)
    # One setting per set of weights: the AutoPipelines family reuses 2.2's own parts.
    assert all(len(settings) == 1 for settings in seen.values()), seen


@pytest.mark.parametrize(
    ("device", "pool", "expected"),
    [
        ("cuda", "auto", "solo"),
        ("cuda:1", "auto", "solo"),
        ("cpu", "auto", "prefork"),
        ("cuda", "threads", "threads"),
    ],
)
def test_cuda_workers_never_fork(device, pool, expected, tmp_path):
    # CUDA cannot be initialised in a forked child (celery#3402): GPU workers run solo.
    assert worker_pool(Settings(state_dir=tmp_path, device=device, worker_pool=pool)) == expected


@pytest.mark.gpu
def test_decoder_on_cuda_renders_the_requested_size(tiny_settings):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from farm.domain.jobs import JobSpec
    from farm.stages import run_decoder, run_prior

    prior = load(K22.part("prior"), tiny_settings.location(K22.part("prior")), device="cuda")
    decoder = load(
        K22.part("decoder"),
        tiny_settings.location(K22.part("decoder")),
        device="cuda",
        dtype="float16",
    )
    job = JobSpec.parse(
        {"prompt": "cat", "seed": 1, "height": 64, "width": 128, "num_inference_steps": 2}
    )
    images = run_decoder(decoder, job, run_prior(prior, job))
    assert [im.size for im in images] == [(128, 64)]


def test_farm_models_cli_verifies_builds_and_repairs(tmp_path):
    """`farm models verify` exits 1 naming what is missing; `build` makes it whole again."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_STATE_DIR=str(tmp_path), FARM_MODELS="kandinsky-3", HF_HUB_OFFLINE="1")

    def farm(*args):
        return subprocess.run(
            [sys.executable, "-m", "farm.cli", "models", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = farm("verify")
    assert missing.returncode == 1
    assert (
        "farm models build kandinsky-3" in missing.stdout
        and "FARM_KANDINSKY3_MODEL" in missing.stdout
    )
    assert farm("build").returncode == 0
    assert farm("verify").returncode == 0
    shutil.rmtree(tmp_path / "models" / "tiny" / "kandinsky3" / "unet")
    broken = farm("verify")
    assert broken.returncode == 1 and "component unet/ is missing" in broken.stdout
    assert "built" in farm("build").stdout and farm("verify").returncode == 0
    listed = json.loads(farm("list", "--json").stdout)
    assert [(r["family"], r["part"], r["ok"]) for r in listed] == [
        ("kandinsky-3", "kandinsky3", True)
    ]


def test_an_evicted_family_leaves_memory(tiny_settings):
    """A ``--resident 1`` decoder never holds two families: once it switches, nothing in the
    worker keeps the evicted family's weights alive (issue 18)."""
    import gc
    import weakref

    from workers.context import Models

    models = Models(tiny_settings, "decoder", ["kandinsky-2.2", "kandinsky-3"], capacity=1)
    unet = weakref.ref(models.pipeline("kandinsky-2.2", "text2img").unet)
    models.pipeline("kandinsky-2.2", "inpaint")
    models.pipeline("kandinsky-3", "text2img")
    gc.collect()
    assert unet() is None, gc.get_referrers(unet())
