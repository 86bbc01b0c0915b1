"""The farm itself on a GPU machine: one decoder worker, a campaign, the prior worker placed once
on each device asked for; images/s, GPU busy share, VRAM per worker, load times, queue waits.

    FARM_STAND_IN=full FARM_DEVICE=cuda FARM_DTYPE=float16 \\
        python bench/gpu_farm.py --out out/gpu          # 32 jobs, 768², 50 + 25 steps
    python bench/gpu_farm.py --smoke --out /tmp/smoke   # tiny parts on the CPU, seconds

Two ways to run, and the output says which ran:

- ``stack``: the whole local stack (Valkey, SeaweedFS, Celery decoder worker, API, feeder) with
  no prior worker of its own; per placement a ``farm worker --stage prior`` process joins it
  with that placement's FARM_DEVICE, the campaign goes through the HTTP API, and the worker is
  stopped again. Needs celery, redis-py, boto3 and the valkey and weed binaries.
- ``inproc``: what is left when they cannot come along: the prior's and the decoder worker's code
  paths (``run_prior_batch``; ``run_decoder_batch`` with PNG encoding in threads) in this one
  process, one stage after the other. No broker, no S3, no queue waits.

A sampler thread reads the GPU's utilisation and memory (nvidia-smi) through each campaign.
``bench/gpu_report.py`` turns the JSON (and bench/gpu_decoder.py's) into the tables of
docs/throughput.md (GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_report  # noqa: E402  (bench/ is not a package)
from gpu_probe import GpuSampler, cpu_rates, missing_for_stack  # noqa: E402

FAMILY = "kandinsky-2.2"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/gpu"), help="results folder")
    ap.add_argument(
        "--state", type=Path, help="the stack's state folder (default OUT/state; GBs at full size)"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny parts, CPU, 64², 2+2 steps")
    ap.add_argument("--mode", choices=["auto", "stack", "inproc"], default="auto")
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prior-steps", type=int, default=25)
    ap.add_argument(
        "--prior-devices",
        default="same,cpu",
        help="placements of the prior worker, in order; 'same': the decoder's device",
    )
    ap.add_argument("--cpu-dtype", default="auto", help="the CPU prior's dtype (auto: faster)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for everything here")
    ap.add_argument("--decoder-json", type=Path, help="bench/gpu_decoder.py's JSON, for the table")
    return ap


# -- the whole stack --------------------------------------------------------------------------


def spawn_prior(settings, device: str, dtype: str, threads: int, log: Path):
    """A ``farm worker --stage prior`` joining the running stack, on ``device``."""
    from farm.local.servers import spawn

    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(settings.worker_env())
    env.update(FARM_DEVICE=device, FARM_DTYPE=dtype, FARM_TORCH_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    pool = "solo" if device.startswith("cuda") else "prefork"
    node = f"prior-{device.replace(':', '')}-{os.getpid()}@gpu-farm"
    argv = [sys.executable, "-m", "farm.cli", "worker", "--stage", "prior", "--models", FAMILY,
            "--name", node, "--pool", pool, "--concurrency", "1"]  # fmt: skip
    # `farm worker` execs celery: the interpreter's path is in its command line before and after.
    return spawn(f"prior-{device}", argv, log, env, marker=sys.executable)


def wait_loaded(settings, proc, log: Path, timeout: float) -> float:
    """Seconds until the worker's pipelines are loaded (its own flag in Redis)."""
    from farm import keys
    from farm.stores.connect import redis_client

    t0 = time.monotonic()
    client = redis_client(settings)
    try:
        while time.monotonic() - t0 < timeout:
            if int(client.get(keys.worker_loaded(proc.pid)) or 0) >= 1:
                return time.monotonic() - t0
            if not proc.alive():
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"the prior worker exited while loading:\n{tail}")
            time.sleep(0.2)
    finally:
        client.close()
    raise RuntimeError(f"the prior worker did not load within {timeout:.0f}s (log: {log})")


def campaign(client, specs: list[dict], deadline: float) -> dict:
    """Submit, poll until finished or the deadline (then cancel); every figure of its jobs."""
    t0 = time.time()
    handle = client.submit_campaign(specs)
    while True:
        status = handle.status()
        if status["state"] in ("finished", "cancelled"):
            break
        if time.monotonic() > deadline:
            handle.cancel()
            status = handle.status()
            break
        time.sleep(0.25)
    t1 = status.get("finished_at") or time.time()
    jobs = list(handle.results())
    return {"t0": t0, "t1": t1, "jobs": jobs, "state": status["state"]}


def job_figures(run: dict) -> dict:
    """Images/s, stage busy shares and queue waits from the jobs' own timings."""
    done = [j for j in run["jobs"] if j["state"] == "done"]
    wall = max(run["t1"] - run["t0"], 1e-9)
    t = [j.get("timings") or {} for j in done]

    def total(name):
        return sum(x.get(name, 0.0) for x in t)

    def mean_ms(name):
        return 1000 * statistics.fmean(x.get(name, 0.0) for x in t) if t else None

    return {
        "jobs": len(run["jobs"]),
        "done": len(done),
        "finished": run["state"] == "finished",
        "wall_s": wall,
        "images_per_s": len(done) / wall,
        "prior_s_per_job": total("prior") / len(done) if done else None,
        "decoder_s_per_image": total("decode") / len(done) if done else None,
        "decoder_busy": total("decode") / wall,
        "prior_busy": total("prior") / wall,
        "decoder_queue_wait_ms": mean_ms("wait_decoder"),
        "prior_queue_wait_ms": mean_ms("wait_prior"),
        "mean_batch": statistics.fmean(x.get("decoder_batch", 1.0) for x in t) if t else None,
    }


def run_stack(settings, args, placements: list[tuple[str, str]], deadline: float) -> dict:
    from farm.client import Client
    from farm.local.bench import jobs
    from farm.local.stack import Stack, fleet_status

    out: dict = {"placements": {}}
    marks: dict[str, float] = {}
    stack = Stack(settings)
    t_up = time.monotonic()

    def progress(line: str) -> None:
        marks.setdefault(
            line.split(":")[0] + (":ready" if "ready" in line else ""), time.monotonic()
        )

    with GpuSampler() as gpu:
        base_vram = gpu.used_gib()
        state = stack.up(workers={"prior": 0, "decoder": 1}, timeout=600, progress=progress)
        live = settings.with_stack()
        dec_pid = next(p["pid"] for p in state["processes"] if p["name"] == "worker-decoder-1")
        started = marks.get("worker-decoder-1", t_up)
        out["stack_up_s"] = time.monotonic() - t_up
        out["decoder_load_s"] = marks.get("worker-decoder-1:ready", time.monotonic()) - started
        out["vram_gib"] = {"baseline": base_vram, "decoder_loaded": gpu.used_gib()}
        out["vram_gib"]["decoder_worker"] = gpu.vram_by_pid().get(dec_pid)
        specs = jobs(FAMILY, args.jobs, args.size, args.steps, args.prior_steps)
        try:
            with Client.from_settings(live) as client:
                for n, (label, device, dtype) in enumerate(placements):
                    out["placements"][label] = res = {"device": device, "dtype": dtype}
                    # Seeds of its own: the prior's results of the last placement are cached.
                    mine = [{**s, "seed": s["seed"] + 100_000 * (n + 1)} for s in specs]
                    log = stack.dir / "logs" / f"prior-{n}-{device.replace(':', '')}.log"
                    threads = max(1, (os.cpu_count() or 2) - 2) if device == "cpu" else 1
                    res["threads"] = threads
                    proc = spawn_prior(live, device, dtype, threads, log)
                    try:
                        res["load_s"] = wait_loaded(live, proc, log, timeout=300)
                        res["vram_gib_prior_worker"] = gpu.vram_by_pid().get(proc.pid)
                        warm = [{**s, "seed": s["seed"] + 20_000} for s in mine[:2]]
                        campaign(client, warm, deadline)
                        run = campaign(client, mine, deadline)
                        res.update(job_figures(run))
                        res["gpu_busy"] = gpu.busy(run["t0"], run["t1"])
                        res["vram_gib_total"] = gpu.used_gib()
                        res["workers"] = fleet_status(live).get("workers", [])
                    except Exception as e:  # noqa: BLE001 - the next placement still runs
                        res["error"] = f"{type(e).__name__}: {e}"
                    finally:
                        proc.stop()
        finally:
            stack.down()
    return out


# -- one process ------------------------------------------------------------------------------


def run_inproc(settings, args, placements: list[tuple[str, str]], deadline: float) -> dict:
    """The prior's and decoder's code paths in this process, one stage after the other."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from farm.domain.jobs import JobSpec
    from farm.families import get
    from farm.families.loading import load
    from farm.local.bench import jobs
    from farm.local.models import build_tiny
    from farm.stages import png_bytes, run_decoder_batch, run_prior_batch

    family = get(FAMILY)
    build_tiny(settings, [FAMILY])
    if settings.torch_threads:  # FARM_TORCH_THREADS, as a worker takes it
        torch.set_num_threads(settings.torch_threads)
    part = {s: family.part(getattr(family.tasks["text2img"], s).part) for s in ("prior", "decoder")}
    specs = [
        JobSpec.parse(s) for s in jobs(FAMILY, args.jobs, args.size, args.steps, args.prior_steps)
    ]
    sync = torch.cuda.synchronize if settings.device.startswith("cuda") else (lambda: None)
    batch = settings.batch_max
    out: dict = {"placements": {}}
    t0 = time.monotonic()
    decoder = load(part["decoder"], settings.location(part["decoder"]), device=settings.device,
                   dtype=settings.dtype)  # fmt: skip
    out["decoder_load_s"] = time.monotonic() - t0
    with GpuSampler() as gpu:
        for label, device, dtype in placements:
            out["placements"][label] = res = {"device": device, "dtype": dtype}
            t0 = time.monotonic()
            prior = load(
                part["prior"], settings.location(part["prior"]), device=device, dtype=dtype
            )
            res["load_s"] = time.monotonic() - t0
            w0, embs = time.time(), []
            for i in range(0, len(specs), batch):
                if time.monotonic() > deadline:
                    break
                embs += run_prior_batch(prior, specs[i : i + batch])
            sync()
            w1 = time.time()
            with ThreadPoolExecutor(max_workers=8) as pool:
                pending = []
                for i in range(0, len(embs), batch):
                    rows = run_decoder_batch(decoder, specs[i : i + batch], embs[i : i + batch], {})
                    pending += [pool.submit(png_bytes, r[0]) for r in rows]
                for f in pending:
                    f.result()
            sync()
            w2, n = time.time(), len(embs)
            res.update(
                jobs=len(specs), done=n, finished=n == len(specs), wall_s=w2 - w0,
                images_per_s=n / (w2 - w0), prior_s_per_job=(w1 - w0) / max(n, 1),
                decoder_s_per_image=(w2 - w1) / max(n, 1),
                # Stages side by side (as the farm runs them) hold the slower one's rate.
                pipelined_images_per_s=n / max(w1 - w0, w2 - w1, 1e-9),
                gpu_busy=gpu.busy(w1, w2),
            )  # fmt: skip
            del prior
    return out


# -- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + args.budget
    if args.smoke:
        args.size, args.steps, args.prior_steps, args.jobs = 64, 2, 2, min(args.jobs, 4)
        os.environ.update(FARM_STAND_IN="tiny", FARM_DEVICE="cpu", FARM_DTYPE="float32")
    args.out.mkdir(parents=True, exist_ok=True)
    from farm.settings import Settings

    state_dir = args.state or args.out / "state"
    settings = Settings.load(
        state_dir=state_dir, models=FAMILY, api_port=0, flower_port=0, redis_url=None,
        s3_endpoint=None, api_url=None, batch_max=8,
    )  # fmt: skip
    import torch

    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "smoke": args.smoke,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(),
        "settings": {
            "stand_in": getattr(settings, "stand_in", "tiny"),
            "device": settings.device,
            "dtype": settings.dtype,
        },  # fmt: skip
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    rates = result["cpu_gflops_per_core"] = cpu_rates()
    cpu_dtype = args.cpu_dtype
    if cpu_dtype == "auto":  # bf16 only where the CPU has the instructions that make it pay
        cpu_dtype = "bfloat16" if rates["bfloat16"] > 1.5 * rates["float32"] else "float32"
    placements = []
    for name in args.prior_devices.split(","):
        device = settings.device if name == "same" else name
        dtype = settings.dtype if device == settings.device else cpu_dtype
        placements.append((f"prior on {device}" + (" (decoder's)" if name == "same" else ""),
                           device, dtype))  # fmt: skip
    lacks = missing_for_stack()
    mode = args.mode if args.mode != "auto" else ("inproc" if lacks else "stack")
    result["mode"] = mode
    result["why_mode"] = f"missing: {'; '.join(lacks)}" if lacks else "everything came along"
    if args.mode != "auto":
        result["why_mode"] = f"asked for with --mode {args.mode}; {result['why_mode']}"
    print(f"gpu_farm: ran {mode} ({result['why_mode']}) on {result['device']}", flush=True)
    if getattr(settings, "stand_in", "tiny") == "full":
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "farm.cli", "models", "build", "--full-size", FAMILY,
             "--out", str(state_dir)], check=True, cwd=ROOT,
        )  # fmt: skip
        result["build_full_s"] = time.monotonic() - t0
    run = run_stack if mode == "stack" else run_inproc
    try:
        result.update(run(settings, args, placements, deadline - 15))
    except Exception as e:  # noqa: BLE001 - what ran so far still goes into the report
        result["error"] = f"{type(e).__name__}: {e}"
    result["total_s"] = time.monotonic() - t_start
    if args.decoder_json and args.decoder_json.is_file():
        result["decoder_bench"] = json.loads(args.decoder_json.read_text())
    result["plan_costs"] = gpu_report.plan_costs(result)
    (args.out / "gpu_farm.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = gpu_report.markdown(result)
    (args.out / "gpu_table.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
