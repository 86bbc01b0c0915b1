"""Batch invariance: every job rendered alone, then inside several batch compositions.

For every family and task that batches, eight jobs with their own prompts (of different lengths),
negative prompts, seeds and inputs are rendered alone, then in four compositions that put each
job in three batches besides (all eight; reversed; pairs; three and five). Per stage:

- prior: the embeddings of ``run_prior_batch`` (what a prior worker runs) against ``run_prior``;
- decoder: ``run_decoder_batch`` / ``run_single_batch`` fed the lone embeddings, against the lone
  render, in 1/255 steps of the 8-bit image;
- both: the batched prior's embeddings through the batched decoder, against the lone render.

Then what runs per row costs, in the same run: the prior (one call vs one per prompt, beside the
decoder's batch) and the calls the farm splits a batch into (``row_groups``).

    .venv/bin/python bench/batch_invariance.py                 # every family and task (~1 min)
    .venv/bin/python bench/batch_invariance.py --only kandinsky-2.2:inpaint --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = (
    "a red cat",
    "a very large blue house by the sea at night, oil painting",
    "tree",
    "a portrait of an old sailor with a pipe, dramatic light, 35mm",
    "two dogs",
    "a city street in the rain, neon signs reflected in puddles, cinematic",
    "moon",
    "a bowl of fruit on a wooden table",
)
NEGATIVES = ("blurry", "low quality, bad anatomy, extra fingers, watermark, text")
# Each job is measured alone and in three batches besides: sizes 8, 8, 2, and 3 or 5.
COMPOSITIONS = (
    [list(range(8))],
    [list(range(7, -1, -1))],
    [[0, 1], [2, 3], [4, 5], [6, 7]],
    [[0, 1, 2], [3, 4, 5, 6, 7]],
)


def _pair(specs, embs):
    return zip(specs, embs or [None] * len(specs), strict=True)


def ref(n: int) -> str:
    return "in:" + format(n, "x") * 64


def inputs() -> dict:
    """Three RGB images (one of another size), two masks, two depth hints, by reference."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for n, (h, w) in enumerate(((64, 64), (64, 64), (96, 128))):
        out[ref(1 + n)] = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    top, left = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    top[:32], left[:, :40] = 255, 255
    out[ref(4)], out[ref(5)] = Image.fromarray(top, "L"), Image.fromarray(left, "L")
    for n in (6, 7):
        out[ref(n)] = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L")
    return out


SIZE = {"height": 64, "width": 64, "num_inference_steps": 4, "prior_num_inference_steps": 3}


def jobs(family: str, task: str, n: int = 8, negative: bool = True) -> list:
    """``n`` compatible jobs whose prompts, negatives, seeds and inputs all differ (``negative``
    False: none has a negative prompt, the prior's zero-embedding path)."""
    from farm.domain.jobs import JobSpec

    base = {"model": family, "task": task, **SIZE}
    specs = []
    for i in range(n):
        row = {**base, "prompt": PROMPTS[i % len(PROMPTS)], "seed": 100 + 7 * i}
        row["negative_prompt"] = NEGATIVES[i % 2] if negative else None
        if task in ("img2img", "controlnet-depth-img2img"):
            row |= {"image": ref(1 + i % 3), "strength": 0.75, "prior_strength": 0.7}
        if task == "inpaint":
            row |= {"image": ref(1 + i % 3), "mask": ref(4 + i % 2)}
        if task.startswith("controlnet"):
            row["hint"] = ref(6 + i % 2)
        if task == "interpolate":
            first = {"text": PROMPTS[i % len(PROMPTS)], "weight": 0.3 + 0.1 * i}
            second = {"image": ref(1 + i % 2), "weight": 1.0} if i % 2 else {"text": "sea"}
            second.setdefault("weight", 0.5)
            row = {**row, "prompt": "", "interpolate": [first, second]}
        specs.append(JobSpec.parse(row))
    return specs


def lone_embeddings(models, spec, images):
    from farm.stages import cache_zero_embed, run_controlnet_prior, run_prior

    prior = models["prior"].pipeline(spec.model, spec.task)
    cache_zero_embed(prior)
    if spec.task.startswith("controlnet"):
        return run_controlnet_prior(prior, None, spec, images)
    return run_prior(prior, spec, images)


def batch_embeddings(models, specs, images):
    """What a prior worker runs for one message: one batched call for text prompts, else per row."""
    from farm.stages import TEXT_PRIOR_TASKS, cache_zero_embed, run_prior_batch

    if specs[0].task not in TEXT_PRIOR_TASKS:
        return [lone_embeddings(models, s, images) for s in specs]
    prior = models["prior"].pipeline(specs[0].model, specs[0].task)
    cache_zero_embed(prior)
    return run_prior_batch(prior, specs)


def render(models, specs, images, embs=None, failed=None):
    """One batched decoder call (one job: exactly the lone path) -> one image per job. A batch
    that raises is rendered one job at a time, as the decoder worker does, and counted."""
    try:
        return _call(models, specs, images, embs)
    except Exception:  # noqa: BLE001 - the worker's own fallback, measured
        if failed is None or len(specs) == 1:
            raise
        failed.append(len(specs))
        return [_call(models, [s], images, e and [e])[0] for s, e in _pair(specs, embs)]


def _call(models, specs, images, embs):
    from farm.families import get
    from farm.stages import run_decoder, run_decoder_batch, run_single, run_single_batch

    pipe = models["decoder"].pipeline(specs[0].model, specs[0].task)
    if len(specs) == 1:
        if get(specs[0].model).two_stage:
            return [run_decoder(pipe, specs[0], embs[0], images)[0]]
        return [run_single(pipe, specs[0], images)[0]]
    if get(specs[0].model).two_stage:
        return [r[0] for r in run_decoder_batch(pipe, specs, embs, images)]
    return [r[0] for r in run_single_batch(pipe, specs, images)]


class Diff:
    """Running max and share of differing values over many image pairs (8-bit steps)."""

    def __init__(self) -> None:
        self.max, self.differ, self.total = 0.0, 0, 0

    def add(self, a, b) -> None:
        import numpy as np

        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:  # a batch rendered this row at another size
            self.max, self.differ, self.total = 255.0, self.differ + a.size, self.total + a.size
            return
        d = np.abs(a - b)
        self.max = max(self.max, float(d.max()))
        self.differ += int((d > 0).sum())
        self.total += d.size

    def row(self) -> dict:
        return {"max": self.max, "share": self.differ / max(self.total, 1)}


def measure(models, images, family: str, task: str, negative: bool = True) -> dict:
    """Max abs difference and share of differing values against the lone render, per stage."""
    from farm.families import get

    specs = jobs(family, task, negative=negative)
    two = get(family).two_stage
    lone_embs = [lone_embeddings(models, s, images) for s in specs] if two else None
    alone = [
        render(models, [s], images, [e] if two else None)[0] for s, e in _pair(specs, lone_embs)
    ]
    prior, decoder, both = Diff(), Diff(), Diff()
    failed: list[int] = []
    for composition in COMPOSITIONS:
        for batch in composition:
            group = [specs[i] for i in batch]
            if not two:
                for i, image in zip(
                    batch, render(models, group, images, failed=failed), strict=True
                ):
                    decoder.add(alone[i], image)
                continue
            given = [lone_embs[i] for i in batch]
            embs = batch_embeddings(models, group, images)
            for i, e in zip(batch, embs, strict=True):
                for name in ("image_embeds", "negative_image_embeds"):
                    a, b = getattr(lone_embs[i], name), getattr(e, name)
                    prior.max = max(prior.max, float((a - b).abs().max()))
                    prior.differ += int((a != b).sum())
                    prior.total += a.numel()
            for i, image in zip(batch, render(models, group, images, given, failed), strict=True):
                decoder.add(alone[i], image)
            for i, image in zip(batch, render(models, group, images, embs, failed), strict=True):
                both.add(alone[i], image)
    label = task if negative else f"{task}, no negative"
    out = {"family": family, "task": label, "decoder": decoder.row(), "failed_batches": failed}
    if two:
        out |= {"prior_embeds": prior.row(), "both": both.row()}
    return out


def prior_cost(models, family: str, n: int = 8, repeats: int = 3) -> dict:
    """Seconds for ``n`` prompts through the prior in one call and one call each, beside the
    decoder's batched render of the same jobs (best of ``repeats``, same process)."""
    import torch

    from farm.stages import cache_zero_embed, generator, run_decoder_batch, run_prior

    specs = jobs(family, "text2img", n)
    prior = models["prior"].pipeline(family, "text2img")
    decoder = models["decoder"].pipeline(family, "text2img")
    cache_zero_embed(prior)

    @torch.inference_mode()
    def one_call():
        gens = [generator(s.seed) for s in specs]
        prior(
            prompt=[s.prompt for s in specs],
            negative_prompt=[s.negative_prompt for s in specs],
            guidance_scale=specs[0].prior_guidance_scale,
            num_inference_steps=specs[0].prior_num_inference_steps,
            generator=gens + gens,
        )

    def per_row():
        return [run_prior(prior, s) for s in specs]

    embs = per_row()
    batched, rows = _best(one_call, repeats), _best(per_row, repeats)
    dec = _best(lambda: run_decoder_batch(decoder, specs, embs, {}), repeats)
    given = list(zip(specs, embs, strict=True))
    dec_rows = _best(lambda: [run_decoder_batch(decoder, [s], [e], {}) for s, e in given], repeats)
    return {
        "family": family,
        "jobs": n,
        "prior_one_call_s": batched,
        "prior_per_row_s": rows,
        "decoder_batch_s": dec,
        "decoder_per_row_s": dec_rows,
        "per_row_over_one_call": rows / batched,
        "added_share_of_prior_plus_decoder": (rows - batched) / (batched + dec),
    }


def split_cost(models, images, family: str, task: str, repeats: int = 3) -> dict | None:
    """Seconds for eight jobs the farm splits into several calls (``row_groups``: Kandinsky 3
    prompts of different token counts, inputs of different sizes) against one unsplit call and
    one call per job. None where the farm has no splitting (the code before it)."""
    from farm import stages

    if not hasattr(stages, "row_groups"):
        return None
    specs = jobs(family, task)
    pipe = models["decoder"].pipeline(family, task)
    groups = stages.row_groups(pipe, specs, images)
    original = stages.row_groups

    failed = []

    def unsplit():
        stages.row_groups = lambda *a, **k: [list(range(len(specs)))]
        try:
            stages.run_single_batch(pipe, specs, images)
        except Exception:  # noqa: BLE001 - inputs of different sizes cannot share one call
            failed.append(1)
        finally:
            stages.row_groups = original

    times = {
        "farm": _best(lambda: stages.run_single_batch(pipe, specs, images), repeats),
        "one_call": _best(unsplit, repeats),
        "per_row": _best(lambda: [stages.run_single(pipe, s, images) for s in specs], repeats),
    }
    return {
        "family": family,
        "task": task,
        "jobs": len(specs),
        "calls": len(groups),
        **{f"{k}_s": v for k, v in times.items()},
        "farm_over_one_call": None if failed else times["farm"] / times["one_call"],
    }


def _best(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def pairs(only: list[str] | None = None) -> list[tuple[str, str]]:
    from farm.families import REGISTRY

    out = [(f, t) for f, fam in REGISTRY.items() if fam.batches for t in fam.tasks]
    if only:
        out = [p for p in out if f"{p[0]}:{p[1]}" in only or p[0] in only]
    return out


def load_models(state_dir: Path, families: list[str]) -> dict:
    from farm.local.models import build_tiny
    from farm.settings import Settings
    from workers.context import Models

    settings = Settings(state_dir=state_dir)
    build_tiny(settings, families)
    return {stage: Models(settings, stage, families) for stage in ("prior", "decoder")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="family or family:task (default: every one)")
    ap.add_argument("--no-cost", action="store_true", help="skip the per-row prior timing")
    for name, default in (("--size", 64), ("--steps", 4), ("--prior-steps", 3)):
        ap.add_argument(name, type=int, default=default)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    import torch

    from farm.families import REGISTRY, get
    from farm.families.loading import quiet

    quiet()
    SIZE.update(height=args.size, width=args.size, num_inference_steps=args.steps)
    SIZE["prior_num_inference_steps"] = args.prior_steps
    todo = pairs(args.only)
    with tempfile.TemporaryDirectory() as tmp:
        models = load_models(Path(tmp), list(REGISTRY))
        images = inputs()
        rows = [measure(models, images, f, t) for f, t in todo]
        rows += [
            measure(models, images, f, t, negative=False)
            for f, t in todo
            if t == "text2img" and get(f).two_stage
        ]
        costs, splits = [], []
        if not args.no_cost:
            two = dict.fromkeys(f for f, _ in todo if get(f).two_stage)
            costs = [prior_cost(models, f) for f in two]
            splits = [split_cost(models, images, f, t) for f, t in todo if not get(f).two_stage]
            splits = [c for c in splits if c and c["calls"] > 1]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU float32, tiny models, "
        f"{args.size}², {args.prior_steps}+{args.steps} steps"
    )
    print(
        "| family | task | prior embeds max (share) | decoder /255 max (share) | both /255 | failed |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        p, d, b = r.get("prior_embeds"), r["decoder"], r.get("both")
        pcell = f"{p['max']:.2e} ({p['share']:.1%})" if p else "—"
        bcell = f"{b['max']:.0f} ({b['share']:.2%})" if b else "—"
        print(
            f"| {r['family']} | {r['task']} | {pcell} | {d['max']:.0f} ({d['share']:.2%}) | {bcell} | {len(r['failed_batches'])} |"
        )
    for c in costs:
        print(
            f"prior {c['family']}, {c['jobs']} prompts: one call {1000 * c['prior_one_call_s']:.1f} ms, "
            f"per row {1000 * c['prior_per_row_s']:.1f} ms ({c['per_row_over_one_call']:.2f}x); "
            f"decoder batch {1000 * c['decoder_batch_s']:.1f} ms; per-row prior adds "
            f"{c['added_share_of_prior_plus_decoder']:.1%} to prior + decoder; (a decoder per "
            f"row would take {1000 * c['decoder_per_row_s']:.1f} ms, "
            f"{c['decoder_per_row_s'] / c['decoder_batch_s']:.2f}x the batch)"
        )
    for c in splits:
        print(
            f"{c['family']} {c['task']}, {c['jobs']} jobs in {c['calls']} calls: "
            f"{1000 * c['farm_s']:.1f} ms; one unsplit call "
            + (
                "fails (inputs of different sizes)"
                if c["farm_over_one_call"] is None
                else f"{1000 * c['one_call_s']:.1f} ms ({c['farm_over_one_call']:.2f}x)"
            )
            + f"; one call per job {1000 * c['per_row_s']:.1f} ms"
        )
    if args.json:
        out = {"rows": rows, "prior_cost": costs, "split_cost": splits}
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
