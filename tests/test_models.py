"""Model registry and the tiny builder: deterministic builds, clear loading errors."""

from __future__ import annotations

import hashlib

import pytest
from farm.models.registry import load_pipeline, resolve
from farm.models.tiny import build_k22, is_tiny

from farm.errors import ModelError
from farm.local.stack import Stack
from farm.settings import Settings


def _digest(folder):
    h = hashlib.sha256()
    # README.md is the model card naming the prior by absolute path: it differs by location.
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_k22(tmp_path_factory.mktemp("tiny"))


def test_tiny_build_is_deterministic(tiny, tmp_path):
    again = build_k22(tmp_path)
    for stage in ("prior", "decoder"):
        assert is_tiny(tiny[stage])
        assert _digest(tiny[stage]) == _digest(again[stage])


def test_resolve_folders_and_hub_ids(tiny):
    assert resolve(str(tiny["prior"]), "prior").pipeline_class == "KandinskyV22PriorPipeline"
    assert resolve(str(tiny["decoder"]), "decoder").pipeline_class == "KandinskyV22Pipeline"
    assert resolve("kandinsky-community/kandinsky-2-2-decoder", "decoder").family == "kandinsky-2.2"


def test_wrong_stage_is_refused(tiny):
    with pytest.raises(ModelError, match="a prior pipeline, configured as the decoder model"):
        resolve(str(tiny["prior"]), "decoder")


def test_missing_folder_says_how_to_build(tmp_path):
    with pytest.raises(ModelError, match="farm models tiny"):
        resolve(str(tmp_path / "nope"), "prior")


def test_unknown_hub_id_lists_known(tmp_path):
    with pytest.raises(ModelError, match="kandinsky-community/kandinsky-2-2-prior"):
        resolve("someone/some-model", "prior")


def test_uncached_hub_id_offline_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelError, match="weights not found locally.*huggingface-cli download"):
        load_pipeline("kandinsky-community/kandinsky-2-2-prior", "prior")


def test_tiny_pipeline_loads_in_the_requested_dtype(tiny):
    import torch

    pipe = load_pipeline(str(tiny["decoder"]), "decoder", dtype="bfloat16")
    assert pipe.unet.dtype == torch.bfloat16


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
    assert Stack(Settings(state_dir=tmp_path, device=device, worker_pool=pool))._pool() == expected


@pytest.mark.gpu
def test_decoder_on_cuda_matches_shape(tiny):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from farm.domain.jobs import JobSpec
    from farm.stages import run_decoder, run_prior

    prior = load_pipeline(str(tiny["prior"]), "prior", device="cuda")
    decoder = load_pipeline(str(tiny["decoder"]), "decoder", device="cuda", dtype="float16")
    job = JobSpec.parse(
        {"prompt": "cat", "seed": 1, "height": 64, "width": 128, "num_inference_steps": 2}
    )
    assert run_decoder(decoder, job, run_prior(prior, job)).size == (128, 64)
