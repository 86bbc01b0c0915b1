"""Kandinsky 2.2 at full size on this machine: each part's load time and memory, then the farm.

    # once: ~20 GB of random weights with the published architecture (a few minutes)
    FARM_STATE_DIR=/work/fullsize-state farm models build --full-size kandinsky-2.2
    # each part alone, in a process of its own: load seconds, RSS/PSS/USS after load and render
    FARM_STATE_DIR=/work/fullsize-state .venv/bin/python bench/fullsize.py parts \\
        --dtypes decoder=float32,decoder=bfloat16,prior=bfloat16
    # the campaign: farm up (prior=1, decoder=1), 2 jobs at 64x64, 2 + 2 steps, farm status
    FARM_STATE_DIR=/work/fullsize-state .venv/bin/python bench/fullsize.py campaign --dtype bfloat16

The prior in fp32 is 14.3 GB of weights: ``prior=float32`` needs a machine with ~16 GB free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GIB = 2**30


def _settings(**update):
    from farm.settings import Settings

    return Settings.load(stand_in="full", **update)


def one_part(stage: str, dtype: str) -> dict:
    """In this process: load the family's part of ``stage``, then render one 64x64 job."""
    import torch

    from farm.families import get
    from farm.families.loading import load
    from workers.memory import usage

    settings = _settings()
    torch.set_num_threads(int(os.environ.get("FARM_TORCH_THREADS") or 2))
    part = get("kandinsky-2.2").part(stage)
    t0 = time.perf_counter()
    pipe = load(part, settings.location(part), dtype=dtype)
    load_s = time.perf_counter() - t0
    after_load = usage()
    g = torch.Generator().manual_seed(0)

    def render() -> bool:
        with torch.inference_mode():
            if stage == "prior":
                # No negative prompt: the prior embeds a blank image with the ViT-bigG tower too.
                out = pipe("a cat", num_inference_steps=2, generator=g)
                return bool(torch.isfinite(out.image_embeds.float()).all())
            embeds = torch.randn(1, 1280, generator=g).to(pipe.unet.dtype)
            image = pipe(
                image_embeds=embeds,
                negative_image_embeds=torch.zeros_like(embeds),
                height=64,
                width=64,
                num_inference_steps=2,
                generator=g,
                output_type="np",
            ).images
            return bool(torch.isfinite(torch.from_numpy(image)).all())

    t0 = time.perf_counter()
    finite = render()  # the first one pages in weights that loading only mapped (fp32: mmap)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    finite = render() and finite
    warm_s = time.perf_counter() - t0
    from farm.families.fullsize import weight_bytes

    return {
        "stage": stage,
        "dtype": dtype,
        "on_disk": weight_bytes(settings.location(part)),
        "held_bytes": sum(
            p.numel() * p.element_size()
            for m in pipe.components.values()
            if isinstance(m, torch.nn.Module)
            for p in m.parameters()
        ),
        "load_s": round(load_s, 1),
        "render_s": round(render_s, 1),
        "warm_render_s": round(warm_s, 1),
        "finite": finite,
        "after_load": after_load,
        "after_render": usage(),
    }


def parts(specs: list[str]) -> list[dict]:
    """Each ``stage=dtype`` in a fresh process (its memory is its own, freed when it ends)."""
    rows = []
    for spec in specs:
        stage, _, dtype = spec.partition("=")
        cmd = [sys.executable, __file__, "_one", stage, dtype]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"{spec}: {out.stderr[-2000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(_row(row), flush=True)
    return rows


def _row(r: dict) -> str:
    a, b = r["after_load"], r["after_render"]
    bound = 1.3 * r["held_bytes"] + 1.5 * GIB
    return (
        f"{r['stage']:8} {r['dtype']:9} params {r['on_disk']['parameters'] / 1e9:.2f} B  "
        f"held {r['held_bytes'] / GIB:5.2f} GiB  load {r['load_s']:5.1f}s  "
        f"render {r['render_s']:5.1f}s, again {r['warm_render_s']:5.1f}s  RSS {a['rss_bytes'] / GIB:5.2f} -> "
        f"{b['rss_bytes'] / GIB:5.2f} GiB (bound {bound / GIB:.2f})  "
        f"PSS {b['pss_bytes'] / GIB:5.2f}  USS {b['uss_bytes'] / GIB:5.2f}  finite {r['finite']}"
    )


def campaign(dtype: str, jobs: int = 2) -> dict:
    """``farm up --models kandinsky-2.2 --workers prior=1,decoder=1`` with the full stand-ins,
    ``jobs`` jobs at 64x64, 2 + 2 steps; times and each worker's memory from the fleet status."""
    import tempfile

    from farm.client import Client
    from farm.families import fullsize
    from farm.local.bench import jobs as job_specs
    from farm.local.stack import Stack, fleet_status

    built = _settings(models="kandinsky-2.2", dtype=dtype, api_port=0, flower_port=0)
    tmp = tempfile.TemporaryDirectory()
    # Servers of their own (no prior embeddings cached by an earlier run), the full-size
    # stand-ins where they were built.
    settings = fullsize.pinned(
        built, built.model_copy(update={"state_dir": Path(tmp.name)}), ["kandinsky-2.2"]
    )
    stack = Stack(settings)
    t0 = time.perf_counter()
    try:
        stack.up(workers={"prior": 1, "decoder": 1}, timeout=900)
        up_s = time.perf_counter() - t0
        live = settings.with_stack()
        loaded = {w["node"]: w for w in fleet_status(live)["workers"]}
        specs = job_specs("kandinsky-2.2", jobs, 64, 2, 2)
        t1 = time.perf_counter()
        with Client.from_settings(live) as client:
            handle = client.submit_campaign(specs)
            progress = handle.wait(timeout=1800)
        run_s = time.perf_counter() - t1
        time.sleep(6)  # a heartbeat after the last render
        after = {w["node"]: w for w in fleet_status(live)["workers"]}
    finally:
        stack.down()
        tmp.cleanup()
    workers = []
    for node, w in after.items():
        first = loaded.get(node, w)
        workers.append(
            {
                "node": node,
                "stage": w["stage"],
                "weights_bytes": w["weights_bytes"],
                "load_s": w.get("load_s"),
                "rss_after_load": first["rss_bytes"],
                "pss_after_load": first.get("pss_bytes"),
                "rss_after_renders": w["rss_bytes"],
                "pss_after_renders": w.get("pss_bytes"),
                "processes": w["processes"],
            }
        )
    result = {"dtype": dtype, "jobs": jobs, "up_s": round(up_s, 1), "run_s": round(run_s, 1)}
    result.update(progress=progress, workers=workers)
    print(f"farm up {up_s:.0f}s; {jobs} jobs in {run_s:.1f}s ({dtype}); {progress}")
    for w in workers:
        bound = 1.3 * w["weights_bytes"] + 1.5 * GIB
        print(
            f"  {w['stage']:8} weights {w['weights_bytes'] / GIB:5.2f} GiB  load {w['load_s']}s  "
            f"PSS {(w['pss_after_load'] or 0) / GIB:.2f} -> "
            f"{(w['pss_after_renders'] or 0) / GIB:.2f} GiB (bound {bound / GIB:.2f}; RSS summed "
            f"over its processes {w['rss_after_renders'] / GIB:.2f})"
        )
        for p in w["processes"]:
            print(
                f"    pid {p['pid']:>7} {'main' if p.get('role') else 'pool'}  RSS "
                f"{(p['rss_bytes'] or 0) / GIB:.2f}  PSS {(p.get('pss_bytes') or 0) / GIB:.2f}  "
                f"USS {(p.get('uss_bytes') or 0) / GIB:.2f} GiB"
            )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("parts", help="each part alone: load seconds, memory")
    p.add_argument("--dtypes", default="decoder=float32,decoder=bfloat16,prior=bfloat16")
    c = sub.add_parser("campaign", help="the full-size farm: 2 jobs through farm up")
    c.add_argument("--dtype", default="bfloat16")
    c.add_argument("--jobs", type=int, default=2)
    o = sub.add_parser("_one")
    o.add_argument("stage")
    o.add_argument("dtype")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.what == "_one":
        print(json.dumps(one_part(args.stage, args.dtype)))
        return
    result = (
        parts(args.dtypes.split(",")) if args.what == "parts" else campaign(args.dtype, args.jobs)
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
