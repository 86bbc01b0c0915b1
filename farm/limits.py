"""Every limit a job is checked against, as the README's table (``farm limits``).

Gathered here, above the families, the domain and the input checks, so that none of them has
to know the others to print them.
"""

from __future__ import annotations

from farm.domain.campaigns import MAX_GRID_JOBS, MAX_JOBS
from farm.domain.jobs import MAX_PROMPT_CHARS, MAX_SEED
from farm.families import REGISTRY
from farm.stores.inputs import MAX_BYTES, MAX_PIXELS


def markdown_limits() -> str:
    """Every limit a job is checked against at submission, per family (`farm limits`)."""
    rows = [
        "| model | sides (px) | multiple of | steps | prior steps |",
        "|---|---|---|---|---|",
    ]
    for name, family in REGISTRY.items():
        lim = family.limits
        prior = (
            f"{lim.min_prior_steps}–{lim.max_prior_steps}"
            if lim.min_prior_steps
            else "— (no prior)"
        )
        rows.append(
            f"| `{name}` | {lim.min_side}–{lim.max_side} | {lim.size_multiple} | "
            f"1–{lim.max_steps} | {prior} |"
        )
    rows += [
        "",
        f"Every family: prompt and negative prompt at most {MAX_PROMPT_CHARS} characters of "
        "valid Unicode (a prompt not blank, but for interpolation); guidance scales 0–100; "
        "strengths above 0 and at most 1, with at least one step left (steps × strength ≥ 1); "
        f"seeds 0–{MAX_SEED}; 1–8 images per prompt. A job list holds at most {MAX_JOBS:,} "
        f"jobs, a grid at most {MAX_GRID_JOBS:,}. Uploads at most {MAX_BYTES // 2**20} MiB and "
        f"{MAX_PIXELS:,} pixels (PNG, JPEG, WebP; masks also as 2-D .npy arrays); campaign "
        "names 200 characters, callback URLs 2,000.",
    ]
    return "\n".join(rows)
