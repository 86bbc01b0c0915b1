"""``farm plan``: gather each stage's cost (a campaign's usage, bench files, the published FLOP
over this machine's measured matmul rate) and print the stage balance farm/plan.py computes.

Where a stage's figure comes from, first found wins: ``--campaign`` (its recorded usage: the
seconds its workers were charged over the images it stored, at its jobs' size and steps), then
``--bench`` files (``farm bench --json``, or ``bench/gpu_farm.py``'s JSON with ``plan_costs``),
then the published reference FLOP (Kandinsky 2.2) over a device's throughput: for a CPU, a
one-thread matmul at the prior's own shape measured here and now (``--cpu-gflops`` instead).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from farm import plan as balance

DEFAULT_DEVICE = {"prior": "cpu", "decoder": "gpu"}  # as the rendered manifests place them


def add_parser(sub) -> None:
    """Register ``farm plan`` on the ``farm`` command's subparsers."""
    p = sub.add_parser(
        "plan", help="prior and decoder workers that keep a rate of images/s (stage balance)"
    )
    p.add_argument("--rate", type=float, required=True, help="images per second to keep")
    p.add_argument("--family", default="kandinsky-2.2")
    p.add_argument("--size", type=int, default=768, help="height and width")
    p.add_argument("--steps", type=int, default=50, help="decoder steps")
    p.add_argument("--prior-steps", type=int, default=25)
    for stage in balance.STAGES:
        p.add_argument(
            f"--{stage}-device",
            choices=balance.DEVICES,
            help=f"where the {stage} runs (default: its measurement's, else "
            f"{DEFAULT_DEVICE[stage]})",
        )
    p.add_argument("--threads", type=int, default=1, help="cores a CPU worker uses (default 1)")
    p.add_argument("--dtype", help="a CPU worker's dtype for the estimate (default FARM_DTYPE)")
    p.add_argument("--cpu-gflops", type=float, help="one core's rate instead of measuring it")
    p.add_argument("--campaign", action="append", default=[], help="a campaign's id (repeat)")
    p.add_argument("--bench", action="append", default=[], help="a bench JSON file (repeat)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def measure_cpu(dtype: str = "float32", batch: int = 8, seconds: float = 1.0) -> float:
    """One core's sustained matmul rate (GFLOP/s) at the prior transformer's shape: a batch of
    prompts, two rows each (guidance), 81 tokens, width 2048. One thread, best of five (a
    machine shared with other work reads low: pass --cpu-gflops there)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dt = getattr(torch, dtype)
        m, k = batch * 2 * 81, 2048
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, k, dtype=dt)
        a @ b  # warm: the first call picks kernels
        best = 0.0
        for _ in range(5):
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds / 5:
                a @ b
                n += 1
            best = max(best, 2 * m * k * k * n / (time.perf_counter() - t0))
        return best / 1e9
    finally:
        torch.set_num_threads(threads)


def bench_costs(path: Path, family: str) -> list[balance.Cost]:
    """Costs in a bench JSON: ``plan_costs`` rows (bench/gpu_farm.py), or ``farm bench``'s
    farm figures (per job and worker, both stages on its machine's device)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for row in data.get("plan_costs", []):
        if row.get("family", family) != family:
            continue
        w = balance.Workload(row["size"], row["steps"], row["prior_steps"])
        source = f"bench {path.name}: {row.get('source', 'measured')}"
        out.append(balance.Cost(row["stage"], row["device"], row["seconds"], w, source))
    params, figures = data.get("params", {}), data.get("farm")
    if figures and params.get("model") == family:
        w = balance.Workload(params["size"], params["steps"], params["prior_steps"])
        device = balance.device_kind(data.get("machine", {}).get("device", "cpu"))
        when = data.get("date", "")
        for stage, key in (("prior", "prior_ms"), ("decoder", "decoder_ms")):
            if figures.get(key):
                source = f"bench {path.name} ({when}): farm bench's {key} per job, one worker"
                out.append(balance.Cost(stage, device, figures[key] / 1000, w, source))
    return out


def campaign_costs(settings, campaign_id: str, family: str) -> list[balance.Cost]:
    """Costs from a campaign's recorded usage, at its jobs' size and steps (read from its first
    job's spec), through the API."""
    from farm.client import Client

    with Client.from_settings(settings.with_stack()) as client:
        handle = client.campaign(campaign_id)
        summary = handle.status()["usage"]
        first = next(iter(handle.results(page_size=1)), None)
    if first is None:
        return []
    spec = first["spec"]
    w = balance.Workload(
        max(spec["height"], spec["width"]),
        spec["num_inference_steps"],
        spec.get("prior_num_inference_steps") or 25,
    )
    if spec["height"] != spec["width"]:
        w = balance.Workload(int((spec["height"] * spec["width"]) ** 0.5), w.steps, w.prior_steps)
    images = int(summary.get("images") or 0)
    source = f"campaign {campaign_id}: recorded usage over {images} images"
    raw = balance.raw_from_summary(summary, family)
    return list(balance.from_usage(raw, family, w, source).values())


def gather(settings, args) -> tuple[list[balance.Cost], list[balance.Cost], dict]:
    """The chosen cost per stage, the other placements' costs, and the CPU rate used."""
    from farm.families import get

    family = get(args.family)
    stages = [s for s in balance.STAGES if s in family.stages]
    measured: list[balance.Cost] = []
    for cid in args.campaign:
        measured += campaign_costs(settings, cid, family.name)
    for path in args.bench:
        measured += bench_costs(Path(path), family.name)
    dtype = args.dtype or settings.dtype
    cpu: dict = {}

    def estimate(stage: str, device: str) -> balance.Cost | None:
        if stage not in balance.REFERENCE_FLOP.get(family.name, {}):
            return None
        if device == "cpu" and not cpu:
            if args.cpu_gflops:
                cpu.update(gflops=args.cpu_gflops, source="given with --cpu-gflops")
            else:
                cpu.update(
                    gflops=measure_cpu(dtype, settings.batch_max),
                    source=f"1-thread {dtype} matmul at the prior's shape, measured now",
                )
        return balance.reference(
            family.name,
            stage,
            device,
            cpu_gflops=cpu.get("gflops", 1.0),
            cpu_source=cpu.get("source", ""),
            threads=args.threads,
        )

    chosen, others = [], []
    for stage in stages:
        mine = [c for c in measured if c.stage == stage]
        device = getattr(args, f"{stage}_device") or (
            mine[0].device if mine else DEFAULT_DEVICE[stage]
        )
        cost = next((c for c in mine if c.device == device), None) or estimate(stage, device)
        if cost is None:
            raise ValueError(
                f"no figure for the {stage} of {family.name} on {device}: pass --campaign ID "
                "(a campaign it rendered) or --bench FILE (farm bench --json / bench/gpu_farm.py)"
            )
        chosen.append(cost)
        other = "gpu" if device == "cpu" else "cpu"
        alt = next((c for c in mine if c.device == other), None) or estimate(stage, other)
        if alt is not None:
            others.append(alt)
    return chosen, others, cpu


def text(p: balance.Plan, others: list[balance.StagePlan], ratio: float | None) -> str:
    w = p.workload
    lines = [
        f"farm plan: {p.rate:g} image{'' if p.rate == 1 else 's'}/s of {p.family} at {w.size}x{w.size}, {w.steps} decoder "
        f"steps, {w.prior_steps} prior steps"
    ]
    for s in p.stages:
        unit = "worker" if s.workers == 1 else "workers"
        lines.append(
            f"  {s.stage:8} on {s.device}: {s.workers:4} {unit:7} {s.seconds:9.3f} s/image each, "
            f"busy {s.busy:4.0%}"
        )
        lines.append(f"           from {s.source}")
    lines.append(
        f"bound: {p.bound} (its workers are the busiest at this rate; these workers hold "
        f"{p.capacity:.2f} images/s)"
    )
    if ratio is not None:
        lines.append(f"one decoder worker at full speed needs {ratio:.1f} prior workers")
    for s in others:
        lines.append(
            f"other placement: {s.stage} on {s.device}: {s.workers} "
            f"worker{'' if s.workers == 1 else 's'} of "
            f"{s.seconds:.3f} s/image, busy {s.busy:.0%} (from {s.source})"
        )
    return "\n".join(lines)


def cmd_plan(settings, args) -> int:
    try:
        w = balance.Workload(args.size, args.steps, args.prior_steps)
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1 (got {args.threads})")
        chosen, others, cpu = gather(settings, args)
        p = balance.plan(args.rate, args.family, chosen, w)
        alts = [balance.plan(args.rate, args.family, [c], w).stages[0] for c in others]
    except (ValueError, KeyError, OSError) as e:
        print(f"farm: error: plan: {e}", file=sys.stderr)
        return 2
    by_stage = {c.stage: c for c in chosen}
    ratio = None
    if "prior" in by_stage and "decoder" in by_stage:
        ratio = balance.replica_ratio(by_stage["prior"], by_stage["decoder"].at(w))
    if args.json:
        out = {**p.to_dict(), "prior_per_decoder": ratio, "cpu_core": cpu or None}
        out["other_placements"] = [vars(s) for s in alts]
        print(json.dumps(out, indent=2))
    else:
        print(text(p, alts, ratio))
    return 0
