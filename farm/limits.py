"""Every limit a job is checked against, as the table in docs/campaigns.md, Limits (``farm limits``).

Gathered here, above the families, the domain and the input checks, so that none of them has
to know the others to print them.
"""

from __future__ import annotations

from farm.domain.campaigns import EXHAUSTIVE, MAX_GRID_JOBS, MAX_JOBS
from farm.domain.jobs import MAX_PROMPT_CHARS, MAX_SEED, bounds
from farm.families import REGISTRY
from farm.stores.inputs import MAX_BYTES, MAX_PIXELS


def markdown_limits() -> str:
    """Every limit a job is checked against at submission, per family (`farm limits`)."""
    rows = [
        "| model | sides (px) | multiple of | steps | prior steps |",
        "|---|---|---|---|---|",
    ]
    for name, family in REGISTRY.items():
        # The bounds a refusal names (``bounds``), so that the table and the messages agree.
        b, lim = bounds(family), family.limits
        lo, hi = b["prior_num_inference_steps"]
        prior = f"{lo}–{hi}" if lim.min_prior_steps else f"— (no prior; {lo}–{hi} taken, unused)"
        rows.append(
            f"| `{name}` | {b['height'][0]}–{b['height'][1]} | {lim.size_multiple} | "
            f"{b['num_inference_steps'][0]}–{b['num_inference_steps'][1]} | {prior} |"
        )
    rows += [
        "",
        f"Every family: prompt and negative prompt at most {MAX_PROMPT_CHARS} characters of "
        "valid Unicode (a prompt not blank, but for interpolation); guidance scales 0–100; "
        "strengths above 0 and at most 1, with at least one step left (steps × strength ≥ 1); "
        f"seeds 0–{MAX_SEED}; 1–8 images per prompt. A job list holds at most {MAX_JOBS:,} "
        f"jobs, a grid at most {MAX_GRID_JOBS:,}, with at most {EXHAUSTIVE:,} combinations of "
        "its parameters other than guidance scales, negative prompts and schedulers (each is "
        f"checked at submission). Uploads at most {MAX_BYTES // 2**20} MiB and "
        f"{MAX_PIXELS:,} pixels (PNG, JPEG, WebP; masks also as 2-D .npy arrays); campaign "
        "names 200 characters, callback URLs 2,000.",
    ]
    return "\n".join(rows)
