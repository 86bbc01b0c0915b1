"""The full-size Kandinsky 2.2 decoder on a GPU: bare batched pipeline, the guides' loop, and the
farm's decoder path, in the same run, with the model FLOP utilisation.

Random weights in the published architecture (UNet ≈ 1.2 B parameters, MoVQ), so the timings are
honest without the hub. One image at 768², 50 steps with guidance ≈ 204 TFLOP (the UNet ≈ 4.0
TFLOP per step with classifier-free guidance, plus MoVQ ≈ 4.9).

    .venv/bin/python bench/gpu_decoder.py --device cuda --dtype float16       # an H100: ~minutes
    .venv/bin/python bench/gpu_decoder.py --tiny --device cpu --images 4      # a smoke run

The farm's path is what a decoder worker runs per message: ``run_decoder_batch`` (one generator
per row) then PNG encoding of each image in threads beside the next render's launch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TFLOP_PER_IMAGE = 204.0  # 768², 50 steps, guidance on (see the docstring)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--peak-tflops", type=float, default=990.0, help="H100 dense FP16/BF16")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny model (a smoke run)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    from concurrent.futures import ThreadPoolExecutor

    import torch

    from farm.domain.jobs import JobSpec
    from farm.families.loading import Speed, quiet, tune
    from farm.stages import png_bytes, run_decoder_batch
    from farm.stores.embeddings import Embeddings

    quiet()
    pipe = build(args.tiny).to(dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    pipe = tune(pipe, args.device, Speed(channels_last=args.channels_last, compile=args.compile))
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

    def farm():
        with ThreadPoolExecutor(max_workers=8) as pool:
            pending = []
            for i in range(0, n, args.batch):
                rows = run_decoder_batch(
                    pipe, specs[i : i + args.batch], embs[i : i + args.batch], {}, pad=args.compile
                )
                pending += [pool.submit(png_bytes, r[0], {"index": i}) for r in rows]
            for f in pending:
                f.result()

    run_decoder_batch(pipe, specs[: args.batch], embs[: args.batch], {}, pad=args.compile)  # warm
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "unet_params": params,
        "params": vars(args),
    }
    for name, fn in (("bare_batched", bare), ("guides_loop", loop), ("farm_decoder_path", farm)):
        seconds = timed(fn)
        result[name] = {"seconds": seconds, "images_per_s": n / seconds}
    flop = TFLOP_PER_IMAGE * (args.size / 768) ** 2 * (args.steps / 50)
    for name in ("bare_batched", "guides_loop", "farm_decoder_path"):
        result[name]["mfu"] = result[name]["images_per_s"] * flop / args.peak_tflops
    print(f"UNet parameters: {params / 1e9:.2f} B on {result['device']}")
    for name in ("bare_batched", "guides_loop", "farm_decoder_path"):
        r = result[name]
        print(f"{name:18} {r['images_per_s']:8.3f} images/s   MFU {100 * r['mfu']:5.1f}%")
    print(
        f"farm / bare: {result['farm_decoder_path']['images_per_s'] / result['bare_batched']['images_per_s']:.2f}   "
        f"farm / loop: {result['farm_decoder_path']['images_per_s'] / result['guides_loop']['images_per_s']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
