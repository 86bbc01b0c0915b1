"""What a campaign (or a tenant) used: images, compute seconds per stage and family, cost. No IO.

Workers add to a campaign's usage hash as they go: ``images`` and ``<stage>:<family>:<device>``
seconds, where a batch's time is the render's wall time (each job is charged its share) and
``device`` is ``cpu`` or ``gpu``. The cost is an estimate: seconds times the price per hour of
that kind of compute, from settings.
"""

from __future__ import annotations

from typing import Any


def usage_field(stage: str, family: str, device: str) -> str:
    return f"{stage}:{family}:{'gpu' if device.startswith('cuda') else 'cpu'}"


def summary(
    raws: list[dict[str, float]], prices: dict[str, float], currency: str
) -> dict[str, Any]:
    """One usage view over several usage hashes (one campaign's, or a tenant's campaigns)."""
    images, by_kind = 0, {"cpu": 0.0, "gpu": 0.0}
    compute: dict[str, dict[str, float]] = {}
    for raw in raws:
        for name, value in raw.items():
            if name == "images":
                images += int(value)
                continue
            stage, family, kind = name.split(":")
            per_stage = compute.setdefault(stage, {})
            per_stage[family] = round(per_stage.get(family, 0.0) + value, 3)
            by_kind[kind] = by_kind.get(kind, 0.0) + value
    priced = any(prices.get(kind) for kind in by_kind)
    cost = sum(seconds / 3600 * prices.get(kind, 0.0) for kind, seconds in by_kind.items())
    return {
        "images": images,
        "compute_s": compute,
        "cpu_s": round(by_kind["cpu"], 3),
        "gpu_s": round(by_kind["gpu"], 3),
        "cost": round(cost, 6) if priced else None,
        "currency": currency if priced else None,
    }
