"""The full-size Kandinsky 2.2 decoder on a GPU: bare batched pipeline, the guides' loop, and the
farm's decoder path, in the same run, with the model FLOP utilisation.

Random weights in the published architecture (UNet ≈ 1.2 B parameters, MoVQ), so the timings are
honest without the hub. One image at 768², 50 steps with guidance ≈ 204 TFLOP (the UNet ≈ 4.0
TFLOP per step with classifier-free guidance, plus MoVQ ≈ 4.9); the run also counts them itself
(torch's FlopCounterMode over one image at 1 and at 2 steps) and takes the MFU from its count.

    .venv/bin/python bench/gpu_decoder.py --device cuda --dtype float16       # an H100: ~2 min
    .venv/bin/python bench/gpu_decoder.py --tiny --device cpu --dtype float32 \
        --size 64 --steps 2 --images 4 --batch 2                              # a smoke run

The farm's path is what a decoder worker runs per message: ``run_decoder_batch`` (one generator
per row) then PNG encoding of each image in threads beside the next render's launch; a call per
job as FARM_BATCH_EXACT (the default) has it, and a call per render (``_batched``) as
FARM_BATCH_EXACT=false has it. The goals are read off the default path.
``--check-pixels`` renders two images eagerly and with channels_last (and torch.compile with
``--compile``) and reports the largest pixel difference, in 1/255 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TFLOP_PER_IMAGE = 204.0  # 768², 50 steps, guidance on (see the docstring)
# The farm's path as a worker runs it by default (FARM_BATCH_EXACT: a call per job), and with
# FARM_BATCH_EXACT=false (a call per render).
PATHS = ("bare_batched", "guides_loop", "farm_decoder_path", "farm_decoder_path_batched")


def build(tiny: bool):
    """A KandinskyV22Pipeline with random weights: the real architecture, or the tests' tiny one."""
    import torch
    from diffusers import KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    if tiny:
        from farm.families.tiny import _decoder_components

        return KandinskyV22Pipeline(**_decoder_components())
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=(
            "SimpleCrossAttnUpBlock2D",
            "SimpleCrossAttnUpBlock2D",
            "SimpleCrossAttnUpBlock2D",
            "ResnetUpsampleBlock2D",
        ),
        block_out_channels=(384, 768, 1152, 1536),
        layers_per_block=3,
        attention_head_dim=64,
        cross_attention_dim=768,
        encoder_hid_dim=1280,
        encoder_hid_dim_type="image_proj",
        addition_embed_type="image",
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    movq = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
        block_out_channels=(128, 256, 256, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_type="spatial",
        num_vq_embeddings=16384,
        vq_embed_dim=4,
    )
    from farm.families.tiny import k22_scheduler

    scheduler = k22_scheduler()
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100/H200 dense FP16/BF16")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny model (a smoke run)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--check-pixels", action="store_true", help="eager vs channels_last (+compile)")
    ap.add_argument("--json", metavar="FILE")
    return ap


def count_tflop(pipe, size: int, steps: int, guidance: float, dim: int) -> dict:
    """TFLOP of one image, counted by torch (matmuls, convolutions, attention) at 1 and 2 steps:
    the difference is a UNet step, the rest MoVQ and the once-per-image work."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    emb = torch.zeros(1, dim, device=pipe.device, dtype=pipe.dtype)
    counted = []
    for n in (1, 2):
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            pipe(
                image_embeds=emb,
                negative_image_embeds=emb,
                height=size,
                width=size,
                num_inference_steps=n,
                guidance_scale=guidance,
                output_type="pt",
            )
        counted.append(fc.get_total_flops() / 1e12)
    step = counted[1] - counted[0]
    once = counted[0] - step
    return {"unet_step": step, "once": once, "per_image": once + step * steps}


def check_pixels(pipe, args, specs, embs, device: str) -> dict:
    """Largest pixel difference (in 1/255 steps) of channels_last, and torch.compile when asked,
    against the eager pipeline (contiguous, not compiled), on two images."""
    import numpy as np
    import torch

    from farm.families.loading import Speed, tune
    from farm.stages import run_decoder_batch

    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)  # the module under a compiled wrapper

    def layout(fmt) -> None:
        for model in (unet, pipe.movq):
            model.to(memory_format=fmt)

    def render():
        rows = run_decoder_batch(pipe, specs[:2], embs[:2], {}, pad=False)
        return np.stack([np.asarray(r[0], dtype=np.int16) for r in rows])

    pipe.unet = unet
    layout(torch.contiguous_format)
    eager = render()
    out = {}
    variants = [("channels_last", Speed(channels_last=True))]
    if args.compile:
        variants.append(("channels_last+compile", Speed(channels_last=True, compile=True)))
    for name, speed in variants:
        pipe.unet = unet
        tune(pipe, device, speed)
        out[name] = int(np.abs(render() - eager).max())
    pipe.unet = unet
    layout(torch.contiguous_format)
    return out


def run(argv: list[str] | None = None) -> dict:
    """Every figure of one run (and the JSON file when ``--json`` is given)."""
    args = parser().parse_args(argv)
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from farm.domain.jobs import JobSpec
    from farm.families.loading import Speed, quiet, tune
    from farm.stages import png_bytes, run_decoder_batch
    from farm.stores.embeddings import Embeddings

    quiet()
    t0 = time.perf_counter()
    pipe = build(args.tiny).to(dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    pipe = tune(pipe, args.device, Speed(channels_last=args.channels_last, compile=args.compile))
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in pipe.unet.parameters())
    dim = pipe.unet.config.encoder_hid_dim
    n = args.images
    specs = [
        JobSpec.parse(
            {
                "prompt": "x",
                "seed": i,
                "height": args.size,
                "width": args.size,
                "num_inference_steps": args.steps,
                "guidance_scale": args.guidance,
            }
        )
        for i in range(n)
    ]
    g = torch.Generator("cpu").manual_seed(0)
    embs = [
        Embeddings(torch.randn(1, dim, generator=g), torch.randn(1, dim, generator=g))
        for _ in specs
    ]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    def bare():
        for i in range(0, n, args.batch):
            run_decoder_batch(pipe, specs[i : i + args.batch], embs[i : i + args.batch], {})

    def loop():
        for spec, emb in zip(specs, embs, strict=True):
            image = pipe(
                image_embeds=emb.image_embeds.to(args.device, pipe.dtype),
                negative_image_embeds=emb.negative_image_embeds.to(args.device, pipe.dtype),
                height=spec.height,
                width=spec.width,
                num_inference_steps=spec.num_inference_steps,
                guidance_scale=spec.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(spec.seed),
            ).images[0]
            png_bytes(image)

    def farm(exact: bool):
        """What a decoder worker runs per message: FARM_BATCH_EXACT (the default) renders each
        job by a call of its own; false, one call per render of up to --batch jobs."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            pending = []
            for i in range(0, n, args.batch):
                part = list(range(i, min(i + args.batch, n)))
                calls = [[j] for j in part] if exact else [part]
                for c in calls:
                    rows = run_decoder_batch(
                        pipe, [specs[j] for j in c], [embs[j] for j in c], {}, pad=args.compile
                    )
                    done = zip(c, rows, strict=True)
                    pending += [pool.submit(png_bytes, r[0], {"index": j}) for j, r in done]
            for f in pending:
                f.result()

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run_decoder_batch(pipe, specs[: args.batch], embs[: args.batch], {}, pad=args.compile)  # warm
    result = {
        "device": torch.cuda.get_device_name() if cuda else args.device,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "unet_params": params,
        "build_s": round(build_s, 1),
        "params": vars(args),
    }
    for name, fn in (
        ("bare_batched", bare),
        ("guides_loop", loop),
        ("farm_decoder_path", lambda: farm(exact=True)),
        ("farm_decoder_path_batched", lambda: farm(exact=False)),
    ):
        seconds = timed(fn)
        result[name] = {"seconds": seconds, "images_per_s": n / seconds}
    counted = count_tflop(pipe, args.size, args.steps, args.guidance, dim)
    reference = TFLOP_PER_IMAGE * (args.size / 768) ** 2 * (args.steps / 50)
    result["tflop_per_image"] = {"counted": counted, "reference": reference}
    for name in PATHS:
        rate = result[name]["images_per_s"]
        result[name]["mfu"] = rate * counted["per_image"] / args.peak_tflops
        result[name]["mfu_reference_flop"] = rate * reference / args.peak_tflops
    farm_rate = result["farm_decoder_path"]["images_per_s"]
    result["farm_over_bare"] = farm_rate / result["bare_batched"]["images_per_s"]
    result["farm_over_loop"] = farm_rate / result["guides_loop"]["images_per_s"]
    result["goals"] = {
        "farm >= 90% of bare batched": result["farm_over_bare"] >= 0.9,
        "farm >= 2x the guides' loop": result["farm_over_loop"] >= 2.0,
        "MFU >= 40%": result["farm_decoder_path"]["mfu"] >= 0.4,
    }
    if cuda:
        result["vram_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.check_pixels:
        result["pixels_max_diff_255"] = check_pixels(pipe, args, specs, embs, args.device)
    print(f"UNet parameters: {params / 1e9:.2f} B on {result['device']} (built in {build_s:.1f}s)")
    print(
        f"TFLOP per image: {counted['per_image']:.2f} counted "
        f"({counted['unet_step']:.3f} a UNet step, {counted['once']:.3f} once), "
        f"{reference:.2f} reference"
    )
    for name in PATHS:
        r = result[name]
        print(f"{name:26} {r['images_per_s']:8.3f} images/s   MFU {100 * r['mfu']:5.1f}%")
    print(
        f"farm / bare: {result['farm_over_bare']:.2f}   farm / loop: {result['farm_over_loop']:.2f}"
    )
    if "pixels_max_diff_255" in result:
        print(f"pixels against eager (max |diff| in 1/255): {result['pixels_max_diff_255']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run()
