"""Stage balance: how many prior and decoder workers keep a rate of images per second. No IO.

A stage's cost is the seconds one worker spends per image, measured (a campaign's recorded
usage, a bench file) or estimated from the published FLOP of the family's networks over a
device's throughput. Each cost says where it came from and at which workload (size, decoder
steps, prior steps); :func:`plan` scales it to the workload asked about and sizes each stage:
``workers = ceil(rate x seconds)``. The stage whose workers are busiest at that rate bounds it
(it saturates first as the rate grows). ``farm plan`` gathers the costs (farm/plan_cli.py);
``infra/render.py`` takes its KEDA replica bounds' ratio from :func:`replica_ratio`.

Scaling: the decoder's seconds go with steps x pixels (the UNet's convolutions; its attention
runs at the lower resolutions, and MoVQ's once-per-image decode is folded in), the prior's
with its steps (its text encoder runs once per prompt: small beside 25 transformer steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

STAGES = ("prior", "decoder")
DEVICES = ("cpu", "gpu")

# Published FLOP per image, with guidance (two rows per step), by family and stage:
# (TFLOP, the workload it is for, how it was derived).
PRIOR_TFLOP_K22 = 8.0
DECODER_TFLOP_K22 = 204.0
REFERENCE_FLOP: dict[str, dict[str, tuple[float, tuple[int, int, int], str]]] = {
    "kandinsky-2.2": {
        "prior": (
            PRIOR_TFLOP_K22,
            (768, 50, 25),
            "prior transformer ~1.0 B parameters x 2 FLOP x 81 tokens x 2 (guidance) x 25 steps",
        ),
        "decoder": (
            DECODER_TFLOP_K22,
            (768, 50, 25),
            "UNet ~4.0 TFLOP a step with guidance x 50 + MoVQ ~4.9 (bench/gpu_decoder.py)",
        ),
    },
}

# A GPU's figure is its published dense fp16 peak times the MFU that good diffusion pipelines
# reach (published Stable Diffusion pipelines: 28-39%; this farm's goal is 40%).
GPU_PEAK_TFLOPS = 989.0  # H100 / H200 SXM, dense FP16/BF16 tensor cores (NVIDIA's datasheet)
GPU_MFU = 0.35  # between the published 28% and 39%: an estimate until bench/gpu_run.sh runs

# One CPU core's sustained matmul rate at the prior's own shape (a batch of 8 prompts, two rows
# each, 81 tokens: 1296 x 2048 @ 2048 x 2048), one thread, torch 2.13, measured with
# `farm plan --measure-cpu` on this project's 2-core Xeon (AVX-512, AMX) on 2026-12-04. The
# rendered manifests use these (a render must not depend on the machine it runs on);
# `farm plan` measures the machine it runs on.
CPU_CORE_GFLOPS = {"float32": 173.0, "bfloat16": 1120.0, "float16": 154.0}
CPU_CORE_SOURCE = "1-thread matmul at the prior's shape, 2-core Xeon (AVX-512, AMX), 2026-12-04"


@dataclass(frozen=True)
class Workload:
    """The job settings a cost is for (height = width = size)."""

    size: int = 768
    steps: int = 50
    prior_steps: int = 25

    def __post_init__(self) -> None:
        for name in ("size", "steps", "prior_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")


@dataclass(frozen=True)
class Cost:
    """Seconds one worker of ``stage`` on ``device`` spends per image at ``workload``."""

    stage: str
    device: str
    seconds: float
    workload: Workload
    source: str

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)} (got {self.stage!r})")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"seconds must be a positive number (got {self.seconds})")

    def at(self, target: Workload) -> Cost:
        """This cost scaled to another workload (see the module docstring)."""
        w = self.workload
        if self.stage == "prior":
            factor = target.prior_steps / w.prior_steps
        else:
            factor = (target.steps / w.steps) * (target.size / w.size) ** 2
        if factor == 1:
            return self
        return replace(self, seconds=self.seconds * factor, workload=target)


def device_kind(device: str) -> str:
    """A torch device or a usage field's device as ``cpu`` or ``gpu``."""
    return "gpu" if device.startswith(("cuda", "gpu")) else "cpu"


def reference(
    family: str,
    stage: str,
    device: str,
    *,
    cpu_gflops: float,
    cpu_source: str,
    threads: int = 1,
    gpu_tflops: float = GPU_PEAK_TFLOPS,
    mfu: float = GPU_MFU,
) -> Cost:
    """An estimate from the published FLOP: a CPU worker of ``threads`` cores at ``cpu_gflops``
    each (a matmul rate: an upper bound on what the network reaches, so these seconds are a
    lower bound), or a GPU at ``mfu`` of ``gpu_tflops``.

    Raises:
        KeyError: no published figure for this family and stage.
    """
    tflop, (size, steps, prior_steps), derived = REFERENCE_FLOP[family][stage]
    if device == "gpu":
        seconds = tflop / (gpu_tflops * mfu)
        how = f"{gpu_tflops:g} TFLOP/s peak x {mfu:.0%} MFU (estimate)"
    else:
        seconds = tflop * 1000 / (cpu_gflops * threads)
        cores = f"{threads} cores" if threads > 1 else "one core"
        how = f"{cpu_gflops:,.0f} GFLOP/s a core x {cores} ({cpu_source})"
    source = f"reference: {tflop:g} TFLOP/image ({derived}) / {how}"
    return Cost(stage, device, seconds, Workload(size, steps, prior_steps), source)


def from_usage(
    raw: dict[str, float], family: str, workload: Workload, source: str
) -> dict[str, Cost]:
    """Costs from one campaign's usage hash (``images`` and ``<stage>:<family>:<device>``
    seconds, farm/domain/usage.py): each stage's seconds over the images stored.

    A worker is charged its render's wall time, shared among the render's jobs: seconds per
    image per worker as the campaign ran (its batching, threads and device). A stage that ran on
    both kinds of device is left out (no one figure fits it).
    """
    images = raw.get("images", 0.0)
    if images <= 0:
        return {}
    out: dict[str, Cost] = {}
    seen: dict[str, set[str]] = {}
    for name, seconds in raw.items():
        parts = name.split(":")
        if len(parts) != 3 or parts[1] != family or parts[0] not in STAGES:
            continue
        stage, _, kind = parts
        seen.setdefault(stage, set()).add(kind)
        if seconds > 0:
            out[stage] = Cost(stage, device_kind(kind), seconds / images, workload, source)
    return {stage: cost for stage, cost in out.items() if len(seen[stage]) == 1}


def raw_from_summary(summary: dict, family: str) -> dict[str, float]:
    """A campaign's usage hash rebuilt from the API's usage view (``summary`` in
    farm/domain/usage.py), which keeps each stage's seconds and the cpu/gpu totals but not each
    stage's device: a stage is on the kind whose total it alone makes up. A stage it cannot
    place that way (seconds of two families, say) is left out."""
    compute = summary.get("compute_s") or {}
    seconds = {
        stage: float(per[family])
        for stage, per in compute.items()
        if stage in STAGES and per.get(family, 0) > 0
    }
    kinds = {k: float(summary.get(f"{k}_s") or 0.0) for k in DEVICES}
    used = [k for k, total in kinds.items() if total > 0]
    raw: dict[str, float] = {"images": float(summary.get("images") or 0)}
    for stage, s in seconds.items():
        if len(used) == 1:
            kind = used[0]
        else:
            # The view rounds to milliseconds: match within a few of them.
            matches = [k for k, total in kinds.items() if abs(total - s) <= 0.005 + 1e-6 * s]
            if len(matches) != 1:
                continue
            kind = matches[0]
        raw[f"{stage}:{family}:{kind}"] = s
    return raw


@dataclass(frozen=True)
class StagePlan:
    """One stage sized for the rate."""

    stage: str
    device: str
    seconds: float  # one worker, per image, at the plan's workload
    workers: int
    busy: float  # share of the workers' time the rate takes
    capacity: float  # images/s these workers hold
    source: str


@dataclass(frozen=True)
class Plan:
    rate: float
    family: str
    workload: Workload
    stages: tuple[StagePlan, ...]
    bound: str  # the busiest stage: the first to saturate as the rate grows
    capacity: float  # images/s the planned workers hold (the bound stage's)

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.stage == name)

    def to_dict(self) -> dict:
        return {
            "rate": self.rate,
            "family": self.family,
            "workload": vars(self.workload),
            "bound": self.bound,
            "capacity": round(self.capacity, 4),
            "stages": [
                {
                    **vars(s),
                    "seconds": round(s.seconds, 4),
                    "busy": round(s.busy, 4),
                    "capacity": round(s.capacity, 4),
                }
                for s in self.stages
            ],
        }


def plan(rate: float, family: str, costs: list[Cost], workload: Workload) -> Plan:
    """Workers per stage that keep ``rate`` images/s at ``workload``.

    Raises:
        ValueError: the rate is not positive, or a stage has no cost or two.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of images/s (got {rate})")
    stages = []
    for name in sorted({c.stage for c in costs}, key=STAGES.index):
        mine = [c for c in costs if c.stage == name]
        if len(mine) != 1:
            raise ValueError(f"{name}: one cost per stage (got {len(mine)})")
        cost = mine[0].at(workload)
        # The float product may land a hair above a whole number it equals.
        workers = max(1, math.ceil(round(rate * cost.seconds, 9)))
        stages.append(
            StagePlan(
                stage=name,
                device=cost.device,
                seconds=cost.seconds,
                workers=workers,
                busy=rate * cost.seconds / workers,
                capacity=workers / cost.seconds,
                source=cost.source,
            )
        )
    if not stages:
        raise ValueError("no stage to plan: give at least one cost")
    bound = max(stages, key=lambda s: s.busy)
    return Plan(rate, family, workload, tuple(stages), bound.stage, bound.capacity)


def replica_ratio(prior: Cost, decoder: Cost) -> float:
    """Prior workers that keep one decoder worker busy (at the same workload)."""
    return prior.at(decoder.workload).seconds / decoder.seconds


def prior_max_replicas(decoder_max: int, ratio: float) -> int:
    """The prior's KEDA maxReplicaCount for ``decoder_max`` decoders at full speed."""
    if decoder_max < 0:
        raise ValueError(f"decoder_max must be >= 0 (got {decoder_max})")
    return max(1, math.ceil(round(decoder_max * ratio, 9)))


def prior_replicas(
    family: str, prior_threads: int, decoder_max: int, dtype: str = "float32"
) -> tuple[int, str]:
    """The rendered manifests' prior maxReplicaCount (infra/render.py), and a sentence saying
    how it was derived: CPU prior pods of ``prior_threads`` cores in ``dtype`` (the prior image
    runs float32) at the recorded core rate, against ``decoder_max`` GPU decoders at the
    reference MFU.

    Raises:
        KeyError: no published figure for this family.
    """
    prior = reference(
        family,
        "prior",
        "cpu",
        cpu_gflops=CPU_CORE_GFLOPS[dtype],
        cpu_source=CPU_CORE_SOURCE,
        threads=prior_threads,
    )
    decoder = reference(family, "decoder", "gpu", cpu_gflops=1.0, cpu_source="")
    ratio = replica_ratio(prior, decoder)
    top = prior_max_replicas(decoder_max, ratio)
    flop = REFERENCE_FLOP[family]
    why = (
        f"maxReplicaCount {top} keeps {decoder_max} decoders busy: a {prior_threads}-core "
        f"{dtype} prior pod takes {prior.seconds:.1f} s a prompt ({flop['prior'][0]:g} TFLOP at "
        f"{CPU_CORE_GFLOPS[dtype]:g} GFLOP/s a core), a GPU decoder {decoder.seconds:.2f} s an "
        f"image ({flop['decoder'][0]:g} TFLOP at {GPU_MFU:.0%} of {GPU_PEAK_TFLOPS:g} TFLOP/s): "
        f"{ratio:.1f} prior pods per decoder (farm/plan.py; estimates until measured: `farm "
        "plan`, docs/throughput.md, Stage balance)."
    )
    return top, why
