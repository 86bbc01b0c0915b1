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


# What a run writes into its output folder; the next run clears them first.
OUTPUTS = ("*-seed*.png", "contact_sheet.png", "results.jsonl")


def clear_outputs(out_dir: Path) -> int:
    """Remove a previous run's images, sheet and results from ``out_dir`` (nothing else)."""
    removed = 0
    for pattern in OUTPUTS:
        for f in out_dir.glob(pattern):
            if f.is_file():
                f.unlink()
                removed += 1
    return removed


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
    """Start the stack if needed, render the demo campaign, fetch its images, results and
    contact sheet, say where to look while the stack is up, then stop it (unless ``keep_up``).

    Returns:
        A summary: campaign id, S3 URIs, local files, contact sheet, Flower URL, seconds.
    """
    from farm.client import Client
    from farm.local.stack import Stack

    t0 = time.perf_counter()
    stack = Stack(settings)
    owned = not stack.running()
    if settings.uses_tiny:
        echo(tiny_notice())
    if clear_outputs(out_dir):
        echo(f"cleared the previous run's images from {out_dir}")
    if owned:
        echo(f"starting the local stack in {stack.dir} ...")
        started = time.monotonic()
        stack.up(progress=lambda line: echo(f"  [{time.monotonic() - started:5.1f}s] {line}"))
    try:
        state = stack.read_state() or {}
        live = settings.with_stack()
        jobs = demo_jobs(settings, size=size, steps=steps)
        with Client.from_settings(live) as client:
            echo(
                f"submitting {len(jobs)} jobs ({len(PROMPTS)} prompts x {len(SEEDS)} seeds) "
                f"to {live.api_url}"
            )
            campaign = client.submit_campaign(jobs, name="demo")
            status = campaign.wait(timeout=timeout, progress=True, poll_s=0.25)
            if status["counts"]["done"] != len(jobs):
                failed = next(campaign.results(state="failed"), None)
                raise SystemExit(
                    f"demo jobs did not all finish: {status['counts']}; "
                    f"first error: {failed.get('error') if failed is not None else None}"
                )
            results = list(campaign.results())
            got = _download(campaign, out_dir, deadline=time.monotonic() + 60)
            # A sign-in link (signed, expiring): a browser cannot send the bearer token.
            link = client.request("POST", f"/v1/campaigns/{campaign.id}/gallery-link")
        files = got["images"]
        bucket = live.s3_bucket
        uris = [f"s3://{bucket}/{job['s3_key']}" for job in results]
        campaign_uri = uris[0].rsplit("/", 1)[0]
        summary = {
            "campaign_id": campaign.id,
            "s3_uris": uris,
            "files": [str(f) for f in files],
            "contact_sheet": str(got["contact_sheet"]),
            "results": str(got["results"]),
            "flower_url": state.get("flower_url"),
            "api_url": live.api_url,
            "gallery_url": (live.api_url or "").rstrip("/") + link["path"],
            "tiny_models": settings.uses_tiny,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        rate = status.get("images_per_second")
        echo(
            f"\ncampaign {campaign.id}: {len(files)} images in {summary['seconds']}s "
            f"(render rate {rate} img/s)"
        )
        for uri, f in zip(uris, files, strict=True):
            echo(f"  {uri}  ->  {f}")
        echo(
            f"\nwhere to look{'' if keep_up or not owned else ' (the URLs while the stack is up)'}:"
        )
        echo(f"  images:        {out_dir}/ ({len(files)} PNGs)")
        echo(f"  contact sheet: {got['contact_sheet']}")
        echo(f"  results:       {got['results']}  (in S3: {campaign_uri}/results.jsonl)")
        echo(
            f"  gallery:       {summary['gallery_url']}\n"
            f"                 (a sign-in link for {link['expires_in_s'] // 60} minutes; a new one: "
            f"`farm gallery {campaign.id}`)"
        )
        echo(f"  API:           {live.api_url}/docs  (token: `farm status --json`)")
        login = (
            f"  (login {state['flower_user']}; password: `farm status --json`, flower_password)"
            if state.get("flower_user")
            else ""
        )
        echo(f"  Flower: {summary['flower_url']}{login}")
        return summary
    finally:
        if owned and not keep_up:
            echo(
                "\nstopping the local stack (its S3 data stays; `farm up` brings it back). "
                "To keep it up and browse: `farm demo --keep-up` or `FARM_DEMO_KEEP=1 make demo`, "
                "then `farm down`."
            )
            stack.down()
        elif owned:
            echo("\nthe stack is still up: `farm status`; `farm down` stops it")
        sys.stdout.flush()


def _download(campaign, out_dir: Path, *, deadline: float) -> dict:
    """Images, results.jsonl and the contact sheet: the campaign's end writes the last two a
    moment after its last job, so wait for them (bounded); if the sheet never comes, draw it
    here from the images and results."""
    while campaign.save_file("contact_sheet.png", out_dir / "contact_sheet.png") is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    got = campaign.download_all(out_dir)
    if got["contact_sheet"] is None:
        got["contact_sheet"] = _local_sheet(out_dir, got)
    return got


def _local_sheet(out_dir: Path, got: dict) -> Path:
    import json

    from farm.sheet import Tile, contact_sheet

    jobs = [json.loads(line) for line in got["results"].read_text(encoding="utf-8").splitlines()]
    done = [j for j in jobs if j["state"] == "done"]
    tiles = [Tile(f.read_bytes(), job) for f, job in zip(got["images"], done, strict=False)]
    path = out_dir / "contact_sheet.png"
    path.write_bytes(contact_sheet(tiles, title="demo"))
    return path
