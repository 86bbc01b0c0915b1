"""docs/throughput.md's GPU tables from bench/gpu_farm.py's JSON (and bench/gpu_decoder.py's
inside it), and the stage costs ``farm plan --bench`` reads back. No IO.

    python bench/gpu_report.py out/gpu/gpu_farm.json     # the tables again, from a saved run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOALS = "goals: the farm ≥ 90% of the bare batched decoder, ≥ 2× the guides' loop, ≥ 40% MFU"


def _kind(device: str) -> str:
    return "gpu" if device.startswith("cuda") else "cpu"


def plan_costs(result: dict) -> list[dict]:
    """Seconds per image per worker, by stage and device, for ``farm plan --bench``."""
    p = result["params"]
    where = f"{result.get('mode')} run on {result.get('device')}, {result.get('date')}"
    rows, seen = [], set()

    def add(stage: str, device: str, seconds, source: str) -> None:
        if seconds and (stage, device) not in seen:
            seen.add((stage, device))
            rows.append(
                {"family": "kandinsky-2.2", "stage": stage, "device": device, "seconds": seconds,
                 "size": p["size"], "steps": p["steps"], "prior_steps": p["prior_steps"],
                 "source": f"{where}: {source}"}
            )  # fmt: skip

    decoder_device = _kind(result.get("settings", {}).get("device", "cpu"))
    for label, r in result.get("placements", {}).items():
        if not r.get("done"):
            continue
        jobs = f"{label}, {r['done']} jobs"
        add("decoder", decoder_device, r.get("decoder_s_per_image"), jobs)
        add("prior", _kind(r["device"]), r.get("prior_s_per_job"), f"{jobs}, {r['dtype']}")
    bench = result.get("decoder_bench")
    if bench:
        bp = bench["params"]
        rows.append(
            {"family": "kandinsky-2.2", "stage": "decoder", "device": _kind(bp["device"]),
             "seconds": 1 / bench["farm_decoder_path"]["images_per_s"], "size": bp["size"],
             "steps": bp["steps"], "prior_steps": p["prior_steps"],
             "source": f"bench/gpu_decoder.py on {bench['device']}: the farm's decoder path"}
        )  # fmt: skip
    return rows


def _f(value, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    return "—" if value is None else fmt.format(value * scale)


def decoder_table(bench: dict) -> str:
    bp = bench["params"]
    flop = bench["tflop_per_image"]
    lines = [
        f"`bench/gpu_decoder.py` — {bench['device']}, {bp['size']}², {bp['steps']} steps, "
        f"{bp['dtype']}, batch {bp['batch']}, {bp['images']} images; {bench['date']}:",
        "",
        "| path | images/s | MFU (counted FLOP) | MFU (204 TFLOP reference) |",
        "|---|---|---|---|",
    ]
    names = {"bare_batched": "bare batched decoder", "guides_loop": "the guides' loop",
             "farm_decoder_path": "the farm's decoder path (a call per job, the default)",
             "farm_decoder_path_batched": "the farm's decoder path, FARM_BATCH_EXACT=false"}  # fmt: skip
    for key, name in names.items():
        if key not in bench:
            continue
        r = bench[key]
        lines.append(
            f"| {name} | {r['images_per_s']:.3f} | {r['mfu']:.1%} | {r['mfu_reference_flop']:.1%} |"
        )
    lines += [
        "",
        f"farm / bare {bench['farm_over_bare']:.2f}, farm / loop {bench['farm_over_loop']:.2f}; "
        f"TFLOP an image counted {flop['counted']['per_image']:.1f} (reference "
        f"{flop['reference']:.1f}); goals met: "
        + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in bench["goals"].items()),
    ]
    if "pixels_max_diff_255" in bench:
        lines.append(f"pixels against eager fp16 (max, 1/255): {bench['pixels_max_diff_255']}")
    if bench.get("vram_peak_gib") is not None:
        lines.append(f"peak VRAM {bench['vram_peak_gib']:.1f} GiB")
    return "\n".join(lines) + "\n"


def farm_table(result: dict) -> str:
    p = result["params"]
    ran = {"stack": "the whole stack (Valkey, SeaweedFS, Celery workers, API, feeder)",
           "inproc": "the decoder worker's code path in one process (no broker, no S3)"}  # fmt: skip
    placements = result.get("placements", {})
    head = (
        f"`bench/gpu_farm.py` — ran **{ran.get(result.get('mode'), result.get('mode'))}** "
        f"({result.get('why_mode')}); {result['device']}, {result['cpus']} CPUs, "
        f"{p['jobs']} jobs at {p['size']}², {p['prior_steps']}+{p['steps']} steps, "
        f"{result['settings']}; {result['date']}"
        + (" — **smoke run (tiny parts)**" if result.get("smoke") else "")
        + ":"
    )
    labels = list(placements)
    rows = [
        ("images/s", "images_per_s", "{:.3f}", 1),
        ("jobs done / asked", None, None, None),
        ("GPU busy share (nvidia-smi)", "gpu_busy", "{:.0%}", 1),
        ("decoder busy share (its compute / wall)", "decoder_busy", "{:.0%}", 1),
        ("decoder queue wait ms/job (mean)", "decoder_queue_wait_ms", "{:.0f}", 1),
        ("prior queue wait ms/job (mean)", "prior_queue_wait_ms", "{:.0f}", 1),
        ("prior s/job", "prior_s_per_job", "{:.3f}", 1),
        ("decoder s/image", "decoder_s_per_image", "{:.3f}", 1),
        ("mean decoder batch", "mean_batch", "{:.1f}", 1),
        ("prior worker load s", "load_s", "{:.1f}", 1),
        ("prior worker VRAM GiB", "vram_gib_prior_worker", "{:.1f}", 1),
    ]
    lines = [head, "", "| figure | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]  # fmt: skip
    for title, key, fmt, scale in rows:
        if key is None:
            cells = [f"{placements[x].get('done', 0)} / {placements[x].get('jobs', p['jobs'])}"
                     for x in labels]  # fmt: skip
        else:
            cells = [_f(placements[x].get(key), fmt, scale) for x in labels]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    vram = result.get("vram_gib") or {}
    lines += [
        "",
        f"decoder worker: load {_f(result.get('decoder_load_s'), '{:.1f}')} s, VRAM "
        f"{_f(vram.get('decoder_worker'), '{:.1f}')} GiB (GPU memory used: "
        f"{_f(vram.get('baseline'), '{:.1f}')} GiB before, "
        f"{_f(vram.get('decoder_loaded'), '{:.1f}')} GiB with it loaded); "
        f"full-size build {_f(result.get('build_full_s'), '{:.0f}')} s; "
        f"whole run {result.get('total_s', 0):.0f} s.",
    ]
    for label in labels:
        r = placements[label]
        if r.get("error"):
            lines.append(f"{label}: **failed**: {r['error'].splitlines()[0]}")
        elif r.get("decoder_busy") is not None and r.get("gpu_busy") is not None:
            starved = r["decoder_busy"] < 0.8 and (r.get("decoder_queue_wait_ms") or 0) < 500
            verdict = "starved by the prior" if starved else "kept busy"
            lines.append(f"{label}: the decoder was {verdict}.")
    if result.get("error"):
        lines.append(f"**run failed**: {result['error'].splitlines()[0]}")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    parts = []
    if result.get("decoder_bench"):
        parts.append(decoder_table(result["decoder_bench"]))
    parts.append(farm_table(result))
    parts.append(GOALS + ".\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
