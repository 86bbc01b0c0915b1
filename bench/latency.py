"""One job through the farm vs the same two pipelines in one process, in the same run.

    .venv/bin/python bench/latency.py [--n 10] [--size 64] [--steps 2]

Starts the local stack in a temporary state folder (unless FARM_STATE_DIR names a running one),
submits N single-job campaigns one after another, waits for each, then runs the same spec N times
in this process with the pipelines already loaded. Prints the medians and the ratio farm/baseline:
the price of the queue hops, the Redis embedding round trip, PNG encoding and the S3 upload.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from farm.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()

    from farm.local.stack import Stack
    from farm.service import Farm

    base = Settings.load()
    owned = not Stack(base).running()
    if owned:
        base = base.model_copy(update={"state_dir": Path(tempfile.mkdtemp(prefix="farm-bench-"))})
    stack = Stack(base)
    t0 = time.perf_counter()
    if owned:
        stack.up()
    print(f"stack up: {time.perf_counter() - t0:.1f}s")
    try:
        settings = base.with_stack()
        farm = Farm(settings)
        spec = {
            "prompt": "a red cat, 4k photo",
            "height": args.size,
            "width": args.size,
            "num_inference_steps": args.steps,
            "prior_num_inference_steps": args.steps,
        }
        farm.submit([{**spec, "seed": 0}]).wait(timeout=120)  # warm-up (first S3 put allocates)
        farm_s = []
        for i in range(args.n):
            t = time.perf_counter()
            (rec,) = farm.submit([{**spec, "seed": i}]).wait(timeout=120, poll_s=0.01)
            farm_s.append(time.perf_counter() - t)
            assert rec.state.value == "done", rec.error

        from farm.domain.jobs import JobSpec
        from farm.families import get
        from farm.families.loading import load
        from farm.stages import png_bytes, run_decoder, run_prior

        k22 = get("kandinsky-2.2")
        prior = load(k22.part("prior"), settings.location(k22.part("prior")))
        decoder = load(k22.part("decoder"), settings.location(k22.part("decoder")))
        run_decoder(
            decoder,
            JobSpec.parse({**spec, "seed": 0}),
            run_prior(prior, JobSpec.parse({**spec, "seed": 0})),
        )
        base_s = []
        for i in range(args.n):
            job = JobSpec.parse({**spec, "seed": i})
            t = time.perf_counter()
            png_bytes(run_decoder(decoder, job, run_prior(prior, job))[0])
            base_s.append(time.perf_counter() - t)
    finally:
        if owned:
            stack.down()
    fm, bm = statistics.median(farm_s), statistics.median(base_s)
    print(f"jobs: {args.n}, {args.size}x{args.size}, {args.steps} steps per stage")
    print(
        f"farm, one job submit->done: median {fm * 1000:.0f} ms (min {min(farm_s) * 1000:.0f}, max {max(farm_s) * 1000:.0f})"
    )
    print(
        f"one process, prior+decoder+png:  median {bm * 1000:.0f} ms (min {min(base_s) * 1000:.0f}, max {max(base_s) * 1000:.0f})"
    )
    print(f"ratio farm/one-process: {fm / bm:.2f}x  (overhead {1000 * (fm - bm):.0f} ms per job)")


if __name__ == "__main__":
    main()
