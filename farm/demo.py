"""``farm demo``: a small campaign end to end on the local stack, with a contact sheet."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from farm.settings import Settings

PROMPTS = [
    "A alien cheeseburger creature eating itself, claymation, cinematic, moody lighting",
    "قطة حمراء تجلس على نافذة، صورة فوتوغرافية",  # Arabic: a red cat sitting on a window, photo
    "水墨画风格的山水，云雾缭绕",  # Chinese: ink-wash landscape, mountains in mist
]
SEEDS = [42, 1234]
NEGATIVE = "low quality, bad quality"

TINY_NOTICE = """\
NOTE: rendering with TINY RANDOM-WEIGHT models built locally (offline): the pictures are noise.
      For real pictures, put the weights in the Hugging Face cache and run e.g.
        FARM_PRIOR_MODEL=kandinsky-community/kandinsky-2-2-prior \\
        FARM_DECODER_MODEL=kandinsky-community/kandinsky-2-2-decoder FARM_DEVICE=cuda make demo
      (or point both settings at local folders written by save_pretrained)."""


def demo_jobs(settings: Settings, *, size: int | None, steps: int | None) -> list[dict]:
    tiny = settings.uses_tiny
    size = size or (128 if tiny else 512)
    steps = steps or (10 if tiny else 50)
    return [
        {
            "prompt": prompt,
            "negative_prompt": NEGATIVE,
            "seed": seed,
            "height": size,
            "width": size,
            "num_inference_steps": steps,
            "prior_num_inference_steps": min(steps, 25),
        }
        for prompt in PROMPTS
        for seed in SEEDS
    ]


def run(
    settings: Settings,
    *,
    out_dir: Path = Path("out/demo"),
    size: int | None = None,
    steps: int | None = None,
    keep_up: bool = False,
    timeout: float = 900,
    echo=print,
) -> dict:
    """Start the stack if needed, render the demo campaign, write the contact sheet, stop.

    Returns:
        A summary: campaign id, S3 URIs, local files, contact sheet, Flower URL, seconds.
    """
    from diffusers.utils import make_image_grid
    from PIL import Image

    from farm.stack import Stack
    from farm.storage import ObjectStore
    from farm.submit import Farm

    t0 = time.perf_counter()
    stack = Stack(settings)
    owned = not stack.running()
    if settings.uses_tiny:
        echo(TINY_NOTICE)
    if owned:
        echo(f"starting the local stack in {stack.dir} ...")
        stack.up()
    try:
        live = settings.with_stack()
        state = stack.read_state() or {}
        farm = Farm(live)
        jobs = demo_jobs(settings, size=size, steps=steps)
        echo(f"submitting {len(jobs)} jobs ({len(PROMPTS)} prompts x {len(SEEDS)} seeds)")
        campaign = farm.submit(jobs)
        records = campaign.wait(timeout=timeout, progress=True)
        failed = [r for r in records if r.state.value != "done"]
        if failed:
            raise SystemExit(f"{len(failed)} demo jobs failed; first: {failed[0].error}")
        store = ObjectStore.from_settings(live)
        out_dir.mkdir(parents=True, exist_ok=True)
        images, files, uris = [], [], []
        for i, rec in enumerate(records):
            data = store.get(rec.s3_key)
            path = out_dir / f"{i:02d}-seed{rec.seed}-{rec.job_id[:8]}.png"
            path.write_bytes(data)
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            files.append(str(path))
            uris.append(store.uri(rec.s3_key))
        sheet = out_dir / "contact_sheet.png"
        make_image_grid(images, rows=len(PROMPTS), cols=len(SEEDS)).save(sheet)
        summary = {
            "campaign_id": campaign.id,
            "s3_uris": uris,
            "files": files,
            "contact_sheet": str(sheet),
            "flower_url": state.get("flower_url"),
            "tiny_models": settings.uses_tiny,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        echo(f"\ncampaign {campaign.id}: {len(records)} images in {summary['seconds']}s")
        for uri, f in zip(uris, files, strict=True):
            echo(f"  {uri}  ->  {f}")
        echo(f"contact sheet: {sheet}")
        echo(f"Flower: {summary['flower_url']}")
        return summary
    finally:
        if owned and not keep_up:
            echo("stopping the local stack (objects stay in its S3 data; `farm demo --keep-up`")
            echo("keeps it running to browse Flower; `farm up` brings it back)")
            stack.down()
        elif owned:
            echo("the stack is still up: `farm status`, `farm down`")
        sys.stdout.flush()
