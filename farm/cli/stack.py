"""``farm`` commands that run the farm here: the local stack (up, down, status), a worker, the
feeder, the demo and the benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from farm.cli.common import with_values
from farm.settings import Settings


def _stack(settings: Settings):
    from farm.local.stack import Stack

    return Stack(settings)


def cmd_up(settings: Settings, args) -> int:
    from farm.local.stack import mask, parse_workers

    if args.models:
        # In the local stack the families it accepts are the families its workers serve.
        settings = with_values(settings, models=args.models)
    workers = parse_workers(args.workers)
    stack = _stack(settings)
    if stack.running():
        print(f"already running (state in {stack.dir})")
        return 0
    print(f"starting the local stack in {stack.dir}", flush=True)
    state = stack.up(workers=workers, progress=step_printer())
    print(f"redis:  {mask(state['redis_url'])}")
    print(f"s3:     {state['s3_endpoint']}  bucket {state['bucket']}")
    print(f"flower: {state['flower_url']}")
    print(f"api:    {state['api_url']}  (docs: {state['api_url']}/docs)")
    if not settings.api_tokens:
        print(f"token:  {state['token']}  (generated; `farm` commands here pick it up themselves)")
    print(f"models: {', '.join(state['models'])}")
    print("workers: " + ", ".join(f"{k}={v}" for k, v in state["worker_counts"].items()))
    print(f"logs:   {stack.dir / 'logs'}")
    return 0


def step_printer(out=None):
    """A progress callback that prints each step with the seconds since it was made."""
    import time

    t0 = time.monotonic()

    def step(line: str) -> None:
        print(f"  [{time.monotonic() - t0:5.1f}s] {line}", file=out or sys.stdout, flush=True)

    return step


def cmd_down(settings: Settings, args) -> int:
    import time

    t0 = time.monotonic()
    stopped = _stack(settings).down()
    took = f" in {time.monotonic() - t0:.1f}s" if stopped else ""
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running") + took)
    return 0


def cmd_status(settings: Settings, args) -> int:
    from farm.local.stack import mask

    status = _stack(settings).status()
    if args.json:
        print(json.dumps(status, indent=2))
    elif not status.get("processes"):
        print(f"not running (state folder {status['state_dir']})")
    else:
        print(f"redis:   {mask(status['redis_url'])}")
        print(f"s3:      {status['s3_endpoint']}  bucket {status['bucket']}")
        login = f"  (login {status['flower_user']}; password: farm status --json)"
        print(f"flower:  {status['flower_url']}{login if status.get('flower_user') else ''}")
        print(f"api:     {status['api_url']}")
        print("queues:")
        for q in status["queues"]:
            print(f"  {q['name']:32} depth {q['depth']:>6}  workers {len(q['workers'])}")
        print("workers:")
        for w in status["workers"]:
            mib = (w["rss_bytes"] or 0) / 2**20
            pss = f" (PSS {w['pss_bytes'] / 2**20:.0f})" if w.get("pss_bytes") else ""
            load = f"  loaded in {w['load_s']:.1f}s" if w.get("load_s") else ""
            print(
                f"  {w['node']:40} {w['stage']:8} {','.join(w['families'])}  "
                f"resident {','.join(w['resident_parts']) or '-'}  RSS {mib:.0f}{pss} MiB{load}"
            )
        # Prometheus scrape targets: the API, Flower and each worker (docs/metrics.md).
        print("metrics:")
        for name, url in status.get("metrics", {}).items():
            print(f"  {name:15} {url}")
        print("processes:")
        for name, p in status["processes"].items():
            print(f"  {name:15} pid {p['pid']:>7}  {'up' if p['alive'] else 'DOWN'}")
    return 0 if status.get("running") else 3


def cmd_demo(settings: Settings, args) -> int:
    import os

    from farm.local import demo

    # FARM_DEMO_KEEP=1 keeps it up from `make demo`, which passes no flags.
    keep = args.keep_up or os.environ.get("FARM_DEMO_KEEP", "") not in ("", "0")
    demo.run(settings, out_dir=Path(args.out), size=args.size, steps=args.steps, keep_up=keep)
    return 0


def cmd_feeder(settings: Settings, args) -> int:
    from farm import feeder

    feeder.main()
    return 0


def cmd_bench(settings: Settings, args) -> int:
    from farm.local import bench
    from farm.local.stack import parse_workers

    if args.batch:
        settings = with_values(settings, batch_max=args.batch)
    result = bench.run(
        settings,
        model=args.model,
        n=args.jobs,
        size=args.size,
        steps=args.steps,
        prior_steps=args.prior_steps,
        workers=parse_workers(args.workers),
        singles=args.singles,
    )
    if args.json:
        bench.save(result, Path(args.json))
    return 0


def cmd_worker(settings: Settings, args) -> int:
    """Replace this process with a Celery worker for one stage and some families."""
    import os

    from farm import fleet
    from farm.families import get

    settings = settings.with_stack()
    settings.require_endpoints("redis_url", "s3_endpoint")
    served = with_values(settings, models=args.models).enabled_families if args.models else None
    served = served or settings.enabled_families
    families = [f for f in served if args.stage in get(f).stages]
    if not families:
        print(f"farm: error: none of {', '.join(served)} has a {args.stage} stage", file=sys.stderr)
        return 2
    pool = args.pool or ("solo" if settings.device.startswith("cuda") else "prefork")
    import secrets
    import socket

    node = args.name or f"{args.stage}-{secrets.token_hex(3)}@{socket.gethostname()}"
    argv = fleet.worker_argv(
        stage=args.stage,
        families=families,
        node=node,
        pool=pool,
        concurrency=args.concurrency,
        resident=args.resident if 0 < args.resident < len(families) else 0,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(settings.worker_env())
    env.update(
        FARM_WORKER_STAGE=args.stage,
        FARM_WORKER_MODELS=",".join(families),
        FARM_WORKER_RESIDENT=str(args.resident),
        PYTHONUNBUFFERED="1",
    )
    root = str(Path(__file__).resolve().parents[2])  # the checkout: farm/cli/stack.py
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if settings.uses_tiny_for(families):
        env.setdefault("HF_HUB_OFFLINE", "1")
    print(f"farm worker {node}: {args.stage} for {', '.join(families)}", file=sys.stderr)
    os.execvpe(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.main", *argv], env)
    return 0  # not reached


def _parse_up(sub) -> None:
    u = sub.add_parser("up", help="start the local stack (servers, workers, Flower, API)")
    u.add_argument(
        "--models", help="families the stack accepts and its workers serve (default: all)"
    )
    u.add_argument(
        "--workers", help="workers per stage, e.g. prior=1,decoder=2 (default: one each)"
    )


def _parse_bench(sub) -> None:
    b = sub.add_parser("bench", help="the guides' loop against the farm, same run, same jobs")
    b.add_argument("--model", default="kandinsky-2.2")
    b.add_argument("--jobs", type=int, default=24)
    b.add_argument("--size", type=int, default=128, help="height and width")
    b.add_argument("--steps", type=int, default=20, help="decoder steps")
    b.add_argument("--prior-steps", type=int, default=10)
    b.add_argument("--workers", help="workers per stage, e.g. prior=1,decoder=1")
    b.add_argument("--batch", type=int, help="most jobs per pipeline call (FARM_BATCH_MAX)")
    b.add_argument("--singles", type=int, default=10, help="one-job campaigns for the overhead")
    b.add_argument("--json", metavar="FILE", help="write every figure as JSON")


def _parse_worker(sub) -> None:
    wk = sub.add_parser("worker", help="run a worker for one stage and some families (a fleet's)")
    wk.add_argument("--stage", required=True, choices=["prior", "decoder"])
    wk.add_argument("--models", help="families it serves, comma-separated (default: all enabled)")
    wk.add_argument(
        "--resident",
        type=int,
        default=0,
        help="families kept loaded at once; the rest load on demand, LRU-evicted (0: all)",
    )
    wk.add_argument("--concurrency", type=int, default=1, help="pool processes (default 1)")
    wk.add_argument("--pool", choices=["prefork", "solo", "threads"], help="default: solo on CUDA")
    wk.add_argument("--name", help="the worker's node name (default: <stage>-<random>@<host>)")


def _parse_status(sub) -> None:
    st = sub.add_parser("status", help="endpoints and state of the local stack")
    st.add_argument("--json", action="store_true", help="machine-readable output")


def _parse_demo(sub) -> None:
    d = sub.add_parser("demo", help="render a small campaign end to end")
    d.add_argument("--out", default="out/demo", help="folder for images and the contact sheet")
    d.add_argument("--size", type=int, help="height and width (multiple of 64)")
    d.add_argument("--steps", type=int, help="decoder inference steps")
    d.add_argument(
        "--keep-up",
        "--keep",
        action="store_true",
        help="leave the stack running afterwards (also FARM_DEMO_KEEP=1); `farm down` stops it",
    )


# name -> (its handler, what adds its parser to the `farm` command's subparsers)
COMMANDS = {
    "up": (cmd_up, _parse_up),
    "bench": (cmd_bench, _parse_bench),
    "worker": (cmd_worker, _parse_worker),
    "down": (cmd_down, lambda sub: sub.add_parser("down", help="stop the local stack")),
    "status": (cmd_status, _parse_status),
    "demo": (cmd_demo, _parse_demo),
    "feeder": (
        cmd_feeder,
        lambda sub: sub.add_parser(
            "feeder", help="feed the queues from the campaigns in S3 (farm up runs one)"
        ),
    ),
}
