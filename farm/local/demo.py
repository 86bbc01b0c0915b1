"""``farm demo``: a small campaign end to end on the local stack, with a contact sheet."""

from __future__ import annotations

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


def tiny_notice() -> str:
    """What the demo says when the pictures will be noise, with the settings that fix it."""
    from farm.families import DEFAULT_FAMILY, get

    family = get(DEFAULT_FAMILY)
    lines = " \\\n".join(f"        {p.env}={p.hub_id}" for p in family.parts_for("prior")[:1])
    lines += " \\\n" + " \\\n".join(
        f"        {p.env}={p.hub_id}" for p in family.parts_for("decoder")[:1]
    )
    return (
        "NOTE: rendering with TINY RANDOM-WEIGHT models built locally (offline): the pictures "
        "are noise.\n      For real pictures, put the weights in the Hugging Face cache "
        f"(`farm models fetch {family.name}`) and run e.g.\n{lines} FARM_DEVICE=cuda make demo\n"
        "      (or point the settings at local folders written by save_pretrained)."
    )


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

    from farm.client import Client
    from farm.local.stack import Stack

    t0 = time.perf_counter()
    stack = Stack(settings)
    owned = not stack.running()
    if settings.uses_tiny:
        echo(tiny_notice())
    if owned:
        echo(f"starting the local stack in {stack.dir} ...")
        stack.up()
    try:
        state = stack.read_state() or {}
        live = settings.with_stack()
        jobs = demo_jobs(settings, size=size, steps=steps)
        with Client.from_settings(live) as client:
            echo(
                f"submitting {len(jobs)} jobs ({len(PROMPTS)} prompts x {len(SEEDS)} seeds) to {live.api_url}"
            )
            campaign = client.submit_campaign(jobs, name="demo")
            status = campaign.wait(timeout=timeout, progress=True, poll_s=0.25)
            if status["counts"]["done"] != len(jobs):
                failed = next(campaign.results(state="failed"), {})
                raise SystemExit(
                    f"demo jobs did not all finish: {status['counts']}; first error: {failed.get('error')}"
                )
            results = list(campaign.results())
            files = [Path(f) for f in campaign.download(out_dir)]
        bucket = live.s3_bucket
        uris = [f"s3://{bucket}/{job['s3_key']}" for job in results]
        images = []
        for f in files:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        sheet = out_dir / "contact_sheet.png"
        make_image_grid(images, rows=len(PROMPTS), cols=len(SEEDS)).save(sheet)
        summary = {
            "campaign_id": campaign.id,
            "s3_uris": uris,
            "files": [str(f) for f in files],
            "contact_sheet": str(sheet),
            "flower_url": state.get("flower_url"),
            "api_url": live.api_url,
            "tiny_models": settings.uses_tiny,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        rate = status.get("images_per_second")
        echo(
            f"\ncampaign {campaign.id}: {len(files)} images in {summary['seconds']}s (render rate {rate} img/s)"
        )
        for uri, f in zip(uris, files, strict=True):
            echo(f"  {uri}  ->  {f}")
        echo(
            f"results manifest: s3://{bucket}/{uris[0].split('/', 3)[3].rsplit('/', 1)[0]}/results.jsonl"
        )
        echo(f"contact sheet: {sheet}")
        login = (
            f" (login {state['flower_user']} / {state['flower_password']})"
            if state.get("flower_user")
            else ""
        )
        echo(f"Flower: {summary['flower_url']}{login}   API: {live.api_url}/docs")
        return summary
    finally:
        if owned and not keep_up:
            echo("stopping the local stack (objects stay in its S3 data; `farm demo --keep-up`")
            echo("keeps it running to browse Flower; `farm up` brings it back)")
            stack.down()
        elif owned:
            echo("the stack is still up: `farm status`, `farm down`")
        sys.stdout.flush()
