"""Full-size stand-ins (issue 18): the published architectures as data, FARM_STAND_IN, the
parameter and byte counts, and a prefork pool that shares its weights.

The architectures are checked on the meta device (no memory, a few seconds). Building and
running them is ``bench/fullsize.py`` and the ``slow`` test at the end, which runs only with
FARM_FULL_SIZE_TESTS=1 (minutes, ~20 GB of disk, ~11 GiB of memory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from farm.families import fullsize, get
from farm.settings import Settings

K22 = get("kandinsky-2.2")


@pytest.fixture(scope="module")
def counts() -> dict[str, dict[str, int]]:
    return {
        name: fullsize.parameters(fullsize.CONFIGS / name)
        for name in ("kandinsky-2.2/prior", "kandinsky-2.2/decoder", "kandinsky-3/kandinsky3")
    }


@pytest.mark.parametrize(
    ("part", "component", "low", "high"),
    [
        # The issue's (and the model cards') figures: ViT-bigG image tower ~1.8 B, its text
        # tower ~0.7 B, the prior transformer ~1 B, the decoder UNet ~1.22 B, MoVQ ~67 M.
        ("kandinsky-2.2/prior", "image_encoder", 1.80e9, 1.90e9),
        ("kandinsky-2.2/prior", "text_encoder", 0.68e9, 0.71e9),
        ("kandinsky-2.2/prior", "prior", 0.98e9, 1.05e9),
        ("kandinsky-2.2/decoder", "unet", 1.20e9, 1.27e9),
        ("kandinsky-2.2/decoder", "movq", 0.06e9, 0.08e9),
        # Kandinsky 3: Flan-UL2's encoder ~8.6 B, its UNet ~3 B (11.9 B in all).
        ("kandinsky-3/kandinsky3", "text_encoder", 8.5e9, 8.8e9),
        ("kandinsky-3/kandinsky3", "unet", 2.9e9, 3.1e9),
    ],
)
def test_full_size_configs_have_the_published_sizes(counts, part, component, low, high):
    assert low <= counts[part][component] <= high, f"{part}/{component}: {counts[part][component]}"


def test_full_size_configs_name_the_components_of_the_hub_repos():
    prior = fullsize.components(fullsize.CONFIGS / "kandinsky-2.2" / "prior")
    assert set(prior) == {
        "text_encoder", "image_encoder", "prior", "scheduler", "image_processor", "tokenizer"
    }  # fmt: skip
    decoder = fullsize.components(fullsize.CONFIGS / "kandinsky-2.2" / "decoder")
    assert set(decoder) == {"unet", "movq", "scheduler"}
    # The embeddings handed from prior to decoder have one width on both sides.
    te = json.loads((fullsize.CONFIGS / "kandinsky-2.2/prior/image_encoder.json").read_text())
    unet = json.loads((fullsize.CONFIGS / "kandinsky-2.2/decoder/unet.json").read_text())
    assert te["projection_dim"] == unet["encoder_hid_dim"] == 1280


def test_stand_in_full_moves_only_the_parts_with_a_full_size_config(tmp_path):
    tiny = Settings(state_dir=tmp_path)
    full = Settings(state_dir=tmp_path, stand_in="full")
    root = tmp_path.resolve() / "models"
    assert tiny.location(K22.part("prior")) == str(root / "tiny" / "prior")
    assert full.location(K22.part("prior")) == str(root / "full" / "prior")
    assert full.location(K22.part("decoder")) == str(root / "full" / "decoder")
    # No full-size config: the tiny build stays (inpainting, ControlNet, depth) ...
    assert full.location(K22.part("inpaint")) == str(root / "tiny" / "inpaint")
    # ... and Kandinsky 3's configs are counted, not built (48 GB in fp32).
    assert full.location(get("kandinsky-3").part("kandinsky3")) == str(root / "tiny" / "kandinsky3")
    # Real weights configured: neither stand-in.
    real = Settings(state_dir=tmp_path, stand_in="full", decoder_model="/models/k22-decoder")
    assert real.location(K22.part("decoder")) == "/models/k22-decoder"
    assert full.worker_env()["FARM_STAND_IN"] == "full"


def test_farm_bench_reads_the_full_size_stand_ins_where_they_were_built(tmp_path):
    built = Settings(state_dir=tmp_path / "built", stand_in="full")
    bench = Settings(state_dir=tmp_path / "bench-run", stand_in="full")
    pinned = fullsize.pinned(built, bench, ["kandinsky-2.2"])
    assert pinned.location(K22.part("prior")) == built.location(K22.part("prior"))
    assert pinned.location(K22.part("inpaint")) == bench.location(K22.part("inpaint"))  # tiny
    assert fullsize.pinned(Settings(state_dir=tmp_path), bench, ["kandinsky-2.2"]) is bench


def test_models_build_takes_full_size():
    from farm.cli import parser

    args = parser().parse_args(["models", "build", "--full-size", "kandinsky-2.2"])
    assert args.full_size and args.family == "kandinsky-2.2"


def test_stand_in_is_checked():
    from farm.errors import ConfigError

    with pytest.raises(ConfigError, match="stand_in"):
        Settings.load(stand_in="huge")


def test_a_missing_full_size_stand_in_names_the_command_that_builds_it(tmp_path):
    from farm.errors import ModelError
    from farm.families.loading import verify

    full = Settings(state_dir=tmp_path, stand_in="full")
    with pytest.raises(ModelError, match="farm models build --full-size kandinsky-2.2"):
        verify(K22, K22.part("decoder"), full.location(K22.part("decoder")), tiny=True)


def test_models_list_reports_parameters_and_bytes(tmp_path):
    from farm.local.models import build_tiny, rows

    settings = Settings(state_dir=tmp_path, models="kandinsky-2.2")
    build_tiny(settings, ["kandinsky-2.2"])
    by_part = {r["part"]: r for r in rows(settings, ["kandinsky-2.2"])}
    decoder = by_part["decoder"]
    assert decoder["stand_in"] == "tiny"
    assert decoder["parameters"] > 0 and decoder["bytes"] == 4 * decoder["parameters"]  # fp32
    full = {
        r["part"]: r for r in rows(Settings(state_dir=tmp_path, stand_in="full"), ["kandinsky-2.2"])
    }
    assert full["decoder"]["stand_in"] == "full" and full["decoder"]["parameters"] is None
    assert not full["decoder"]["ok"] and full["inpaint"]["ok"]


def test_weight_bytes_reads_the_safetensors_headers(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file(
        {"a": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.bfloat16)},
        tmp_path / "x.safetensors",
    )
    assert fullsize.weight_bytes(tmp_path) == {"parameters": 22, "bytes": 15 * 4 + 7 * 2}


def test_the_full_size_tokenizer_has_the_real_vocabulary():
    tok = fullsize._tokenizer({"vocab_size": 49408, "model_max_length": 77})
    assert len(tok) == 49408
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)  # last, as in CLIP
    ids = tok("a cat, قطة, 고양이", padding="max_length", max_length=77)["input_ids"]
    assert len(ids) == 77 and ids[0] == 49406 and max(ids) == 49407


def test_memory_usage_reads_pss_and_uss():
    from workers.memory import usage

    u = usage()
    assert u["rss_bytes"] > 0 and 0 < u["pss_bytes"] <= u["rss_bytes"]
    assert 0 < u["uss_bytes"] <= u["rss_bytes"]


def test_prefork_children_share_the_weights_loaded_before_the_fork(monkeypatch, tmp_path):
    """The main process loads (memory.preload); a forked pool process takes those models
    (memory.take) and reads every weight without a private copy: its USS stays far below."""
    import torch

    from workers import context, memory

    weights = 256 * 2**20

    def parts(self, family):  # a "part" of 256 MiB of weights, loaded once
        if family not in self.loaded:
            self.loaded[family] = {"w": torch.ones(weights // 4)}
        return self.loaded[family]

    monkeypatch.setattr(context.Models, "parts", parts)
    monkeypatch.setattr(memory, "shared", None)
    settings = Settings(state_dir=tmp_path, torch_threads=1)
    memory.preload(context.Models(settings, "decoder", ("kandinsky-2.2",)), 0)
    assert memory.take("decoder", ("kandinsky-2.2",), 0) is memory.shared
    assert memory.take("decoder", ("kandinsky-2.2",), 1) is None  # --resident: children load
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the pool process
        try:
            models = memory.take("decoder", ("kandinsky-2.2",), 0)
            memory.load(models, ("kandinsky-2.2",))
            total = float(models.parts("kandinsky-2.2")["w"].sum())  # touches every page
            report = {"total": total, **memory.fields(models)}
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    assert report["total"] == weights // 4
    assert report["shared_weights"] is True
    assert report["rss_bytes"] > weights  # the weights are mapped ...
    assert report["uss_bytes"] < weights / 4  # ... but not the child's own copy


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FARM_FULL_SIZE_TESTS", "") in ("", "0"),
    reason="full size: set FARM_FULL_SIZE_TESTS=1 (minutes, ~20 GB disk, ~11 GiB memory)",
)
def test_full_size_campaign_runs_on_this_machine(tmp_path):
    """Two jobs at 64x64, 2 + 2 steps, through `farm up` with the full-size Kandinsky 2.2 in
    bf16; each worker within 1.3 x its weights + 1.5 GiB. FARM_FULL_SIZE_STATE: a state folder
    that has them built (else they are built into a temporary one first)."""
    import subprocess
    import sys

    state = Path(os.environ.get("FARM_FULL_SIZE_STATE") or tmp_path)
    env = {**os.environ, "FARM_STATE_DIR": str(state), "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parent.parent
    cli = [sys.executable, "-m", "farm.cli", "models", "build", "--full-size", "kandinsky-2.2"]
    subprocess.run(cli, cwd=root, env=env, check=True, timeout=1800)
    out = tmp_path / "campaign.json"
    bench = [sys.executable, "bench/fullsize.py", "--json", str(out), "campaign"]
    subprocess.run(bench, cwd=root, env=env, check=True, timeout=3000)
    result = json.loads(out.read_text())
    assert result["progress"]["counts"]["done"] == 2
    for w in result["workers"]:
        bound = 1.3 * w["weights_bytes"] + 1.5 * 2**30
        # Each process's RSS, and the worker's PSS (its processes share the weights: RSS
        # summed over them counts the weights once per process).
        assert w["pss_after_renders"] <= bound, w
        assert all(p["rss_bytes"] <= bound for p in w["processes"]), w
        assert all(p.get("shared_weights", True) for p in w["processes"]), w


def test_status_shows_a_prefork_pool_sharing_its_weights(stack, settings):
    """The session's decoder worker (prefork, one pool process per core) loaded its weights
    before the fork: `farm status` counts them once, with PSS, USS and load seconds."""
    from farm.local.stack import fleet_status

    decoder = next(w for w in fleet_status(settings)["workers"] if w["stage"] == "decoder")
    main, *pool = decoder["processes"]
    assert pool and all(p["shared_weights"] for p in pool), pool
    assert all(p["load_s"] > 0 and p["pss_bytes"] > 0 and p["uss_bytes"] > 0 for p in pool)
    assert main["pss_bytes"] > 0 and main["rss_bytes"] > 0
    # RSS counts the shared pages in every process; PSS divides them among their sharers.
    assert decoder["pss_bytes"] < decoder["rss_bytes"]
    assert decoder["load_s"] > 0 and decoder["weights_bytes"] > 0
