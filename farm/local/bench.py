"""``farm bench``: the guides' for-loop and the farm, in the same run, on the same jobs.

Order: baseline, farm, baseline (the baseline's figure is the mean of both, so a machine that
speeds up or slows down during the run shows in the spread). The baseline is what a user writes
instead of the farm: load the prior and the decoder once, then per job prior -> decoder -> PNG.
The farm is a local stack of its own (embedded servers, workers, API): one campaign through the
HTTP API, timed from the POST to the last job done; then single-job campaigns one after another,
to measure what orchestration costs one job (its latency minus its compute).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from farm.families import get
from farm.settings import Settings

NEGATIVE = "low quality, bad quality"


def jobs(model: str, n: int, size: int, steps: int, prior_steps: int) -> list[dict]:
    return [
        {
            "model": model,
            "prompt": f"a portrait of a cat number {i}, oil painting",
            "negative_prompt": NEGATIVE,
            "seed": 1000 + i,
            "height": size,
            "width": size,
            "num_inference_steps": steps,
            "prior_num_inference_steps": prior_steps,
        }
        for i in range(n)
    ]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def baseline(settings: Settings, specs: list[dict], out: Path) -> dict:
    """The guides' loop in this process: load once, then prior -> decoder -> PNG per job."""
    import torch

    from farm.families.loading import load

    family = get(specs[0]["model"])
    text2img = family.tasks["text2img"]
    decoder_part = family.part(text2img.decoder.part)
    decoder = load(decoder_part, settings.location(decoder_part))
    prior = None
    if family.two_stage and text2img.prior is not None:
        prior_part = family.part(text2img.prior.part)
        prior = load(prior_part, settings.location(prior_part))
    out.mkdir(parents=True, exist_ok=True)
    t_prior = t_decoder = t_png = 0.0
    start = time.perf_counter()
    for n, job in enumerate(specs):
        g = torch.Generator().manual_seed(job["seed"])
        t0 = time.perf_counter()
        if prior is not None:
            image_embeds, negative_image_embeds = prior(
                job["prompt"],
                negative_prompt=job["negative_prompt"],
                num_inference_steps=job["prior_num_inference_steps"],
                generator=g,
            ).to_tuple()
            t1 = time.perf_counter()
            image = decoder(
                image_embeds=image_embeds,
                negative_image_embeds=negative_image_embeds,
                height=job["height"],
                width=job["width"],
                num_inference_steps=job["num_inference_steps"],
                generator=torch.Generator().manual_seed(job["seed"]),
            ).images[0]
        else:
            t1 = t0
            image = decoder(
                job["prompt"],
                negative_prompt=job["negative_prompt"],
                height=job["height"],
                width=job["width"],
                num_inference_steps=job["num_inference_steps"],
                generator=g,
            ).images[0]
        t2 = time.perf_counter()
        image.save(out / f"{n:05d}.png")
        t3 = time.perf_counter()
        t_prior, t_decoder, t_png = t_prior + t1 - t0, t_decoder + t2 - t1, t_png + t3 - t2
    wall = time.perf_counter() - start
    k = len(specs)
    return {
        "wall_s": wall,
        "images_per_s": k / wall,
        "prior_ms": 1000 * t_prior / k,
        "decoder_ms": 1000 * t_decoder / k,
        "png_ms": 1000 * t_png / k,
    }


def _campaign(client, specs: list[dict], poll_s: float = 0.2) -> tuple[float, list[dict]]:
    """Submit and wait; the wall time runs from the POST to the server's own record of the last
    job done (the local stack shares this clock), so polling slowly costs no precision and
    leaves the cores to the farm."""
    t0 = time.time()
    handle = client.submit_campaign(specs)
    while True:
        status = handle.status()
        if status["state"] in ("finished", "cancelled"):
            break
        time.sleep(poll_s)
    wall = status["finished_at"] - t0
    done = list(handle.results())
    failed = [j for j in done if j["state"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not finish: {failed[0]['error']}")
    return wall, done


def wait_idle(settings: Settings, timeout: float = 60) -> None:
    """Until no worker has a task in hand (asked over the broker, as `celery inspect` does)."""
    from workers.app import create_app

    app = create_app(settings)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = app.control.inspect(timeout=0.5).active()
            if active is not None and not any(active.values()):
                return
    finally:
        app.close()


def farm(settings: Settings, specs: list[dict], workers: dict[str, int], singles: int) -> dict:
    """One campaign through a local stack of its own, then ``singles`` one-job campaigns."""
    from farm.client import Client
    from farm.local.stack import Stack

    stack = Stack(settings)
    state = stack.up(workers=workers, timeout=300)
    # How many renders run at once: workers x pool processes.
    slots = {
        stage: workers.get(stage, 0) * state.get("worker_shape", {}).get(stage, (1, 1))[0]
        for stage in ("prior", "decoder")
    }
    try:
        live = settings.with_stack()
        with Client.from_settings(live) as client:
            # Warm: first calls of each pipeline, connections; then let its finalize task
            # (results + contact sheet) finish, so it does not hold a worker in the timed run.
            _campaign(client, [{**s, "seed": s["seed"] + 20_000} for s in specs[:2]])
            wait_idle(live)
            wall, done = _campaign(client, specs)
            one = []
            for spec in specs[:singles]:
                _, (job,) = _campaign(client, [{**spec, "seed": spec["seed"] + 10_000}])
                t = job["timings"]
                compute = t.get("prior", 0) + t.get("decode", 0) + t.get("store", 0)
                one.append(1000 * (t["latency"] - compute))
    finally:
        stack.down()
    timings = [j["timings"] for j in done]
    k = len(specs)

    def mean_ms(name: str) -> float:
        return 1000 * statistics.fmean(t.get(name, 0.0) for t in timings)

    busy = {
        "prior": sum(t.get("prior", 0.0) for t in timings) / max(slots["prior"], 1),
        "decoder": sum(t.get("decode", 0.0) + t.get("store", 0.0) for t in timings)
        / max(slots["decoder"], 1),
    }
    latency = [1000 * t["latency"] for t in timings if "latency" in t]
    batch = [t.get("decoder_batch", 1.0) for t in timings]
    return {
        "wall_s": wall,
        "images_per_s": k / wall,
        "prior_ms": mean_ms("prior"),
        "decoder_ms": mean_ms("decode"),
        "upload_ms": mean_ms("store"),
        "queue_wait_ms": 1000
        * statistics.fmean(t.get("wait_prior", 0.0) + t.get("wait_decoder", 0.0) for t in timings),
        "latency_p50_ms": _pct(latency, 0.5),
        "latency_p95_ms": _pct(latency, 0.95),
        "overhead_per_job_ms": 1000 * max(wall - max(busy.values()), 0.0) / k,
        "single_job_overhead_p50_ms": _pct(one, 0.5),
        "single_job_overhead_p95_ms": _pct(one, 0.95),
        "batch_fill": statistics.fmean(batch) / settings.batch_max,
        "mean_batch": statistics.fmean(batch),
        "prior_cache_hits": int(sum(t.get("prior_cache_hit", 0.0) for t in timings)),
        "slots": slots,
    }


def run(
    settings: Settings,
    *,
    model: str = "kandinsky-2.2",
    n: int = 24,
    size: int = 128,
    steps: int = 20,
    prior_steps: int = 10,
    workers: dict[str, int] | None = None,
    singles: int = 10,
    echo=print,
) -> dict:
    """Baseline, farm, baseline; returns every figure (and prints the table)."""
    from farm.families import fullsize
    from farm.local.models import build_tiny

    workers = workers or {"prior": 1, "decoder": 1}
    specs = jobs(model, n, size, steps, prior_steps)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        local = settings.model_copy(update={"state_dir": state, "api_port": 0, "flower_port": 0})
        local = Settings(**{k: v for k, v in local.model_dump().items() if v is not None})
        local = fullsize.pinned(settings, local, [model])  # FARM_STAND_IN=full: built once
        # The tiny models are built once, where the bench's own stack will look for them.
        build_tiny(local, [model])
        echo(f"baseline (the guides' loop): {n} jobs, {size}x{size}, {prior_steps}+{steps} steps")
        first = baseline(local, specs, Path(tmp) / "loop1")
        echo(f"  {first['images_per_s']:.2f} images/s")
        echo(f"farm (local stack, workers {workers}, batch up to {local.batch_max})")
        mid = farm(local, specs, workers, singles)
        echo(f"  {mid['images_per_s']:.2f} images/s")
        echo("baseline again")
        last = baseline(local, specs, Path(tmp) / "loop2")
        echo(f"  {last['images_per_s']:.2f} images/s")
    base = statistics.fmean([first["images_per_s"], last["images_per_s"]])
    result = {
        "machine": {"cpus": os.cpu_count(), "device": settings.device},
        "date": time.strftime("%Y-%m-%d"),
        "params": {
            "model": model,
            "jobs": n,
            "size": size,
            "steps": steps,
            "prior_steps": prior_steps,
            "workers": workers,
            "batch_max": local.batch_max,
        },
        "baseline": [first, last],
        "farm": mid,
        "ratio": mid["images_per_s"] / base,
    }
    echo(table(result))
    return result


def table(r: dict) -> str:
    """The table in docs/throughput.md: one row per figure."""
    f, (b1, b2) = r["farm"], r["baseline"]
    p = r["params"]

    def ms(v):
        return "—" if v is None else f"{v:.1f}"

    rows = [
        "| figure | guides' loop | farm |",
        "|---|---|---|",
        f"| images/s | {b1['images_per_s']:.2f} / {b2['images_per_s']:.2f} | "
        f"{f['images_per_s']:.2f} (**{r['ratio']:.2f}×**) |",
        f"| prior ms/job | {ms(b1['prior_ms'])} | {ms(f['prior_ms'])} |",
        f"| decoder ms/job | {ms(b1['decoder_ms'])} | {ms(f['decoder_ms'])} |",
        f"| PNG + store ms/job (farm: S3, the part the next render did not hide) | "
        f"{ms(b1['png_ms'])} | {ms(f['upload_ms'])} |",
        f"| queue wait ms/job (mean) | — | {ms(f['queue_wait_ms'])} |",
        f"| job latency p50 / p95 ms | — | {ms(f['latency_p50_ms'])} / {ms(f['latency_p95_ms'])} |",
        f"| overhead ms/job (wall − busiest stage) | — | {ms(f['overhead_per_job_ms'])} |",
        f"| one-job overhead p50 / p95 ms (latency − compute) | — | "
        f"{ms(f['single_job_overhead_p50_ms'])} / {ms(f['single_job_overhead_p95_ms'])} |",
        f"| batch fill (mean batch / max) | — | {f['batch_fill']:.2f} ({f['mean_batch']:.1f}/"
        f"{p['batch_max']}) |",
        f"| prior cache hits | — | {f['prior_cache_hits']} |",
    ]
    head = (
        f"{p['model']}, {p['jobs']} jobs, {p['size']}², {p['prior_steps']}+{p['steps']} steps, "
        f"workers {p['workers']}; {r['machine']['cpus']} CPUs, {r['date']}"
    )
    return head + "\n\n" + "\n".join(rows)


def save(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
