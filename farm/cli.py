"""The ``farm`` command: local stack, demo, tiny models. Settings are built here, once."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from farm.errors import (
    ConfigError,
    Conflict,
    FarmError,
    InvalidJob,
    NotFound,
    QuotaExceeded,
    Unauthorized,
)
from farm.plan_cli import add_parser as add_plan_parser
from farm.plan_cli import cmd_plan
from farm.settings import Settings


def _stack(settings: Settings):
    from farm.local.stack import Stack

    return Stack(settings)


def _with(settings: Settings, **update) -> Settings:
    """The settings with some values replaced, validated again."""
    raw = {k: v for k, v in settings.model_dump().items() if v is not None}
    return Settings.load(**{**raw, **update})


def cmd_up(settings: Settings, args) -> int:
    from farm.local.stack import mask, parse_workers

    if args.models:
        # In the local stack the families it accepts are the families its workers serve.
        settings = _with(settings, models=args.models)
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
        # Prometheus scrape targets: the API, Flower and each worker (README, Metrics).
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


def _client(settings: Settings):
    from farm.client import Client

    return Client.from_settings(settings)


def load_campaign_file(path: Path) -> dict:
    """A campaign from YAML or JSON (an object with jobs or grid), or JSONL (one job a line)."""
    import yaml

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        jobs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    jobs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InvalidJob(f"{path.name}:{n}", f"not JSON: {e.msg}") from None
        return {"jobs": jobs}
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise InvalidJob(
            path.name, f"not JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidJob(path.name, f"not valid YAML{where}: {problem}") from None
    if isinstance(data, list):
        return {"jobs": data}
    if not isinstance(data, dict):
        raise InvalidJob(path.name, "must hold a campaign object or a list of jobs")
    return data


def cmd_submit(settings: Settings, args) -> int:
    body = load_campaign_file(Path(args.file))
    with _client(settings) as client:
        from farm.client import CampaignHandle

        # The file as written: the API checks every key (priority and callback_url are kept,
        # a misspelt key is refused), not only the ones the client's arguments name.
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        out = client.request("POST", "/v1/campaigns", json=body, headers=headers)
        handle = CampaignHandle(client, out["campaign_id"], out["job_count"], out["created"])
        note = "" if handle.created else " (existing campaign for this Idempotency-Key)"
        print(f"campaign {handle.id}: {handle.job_count} jobs{note}")
        if args.wait:
            status = handle.wait(progress=True)
            print(json.dumps(status["counts"]))
    return 0


def cmd_settings(settings: Settings, args) -> int:
    print(Settings.markdown_table())
    return 0


def cmd_capabilities(settings: Settings, args) -> int:
    from farm.families import markdown_matrix

    print(markdown_matrix())
    return 0


def cmd_upload(settings: Settings, args) -> int:
    with _client(settings) as client:
        print(client.upload(Path(args.file)))
    return 0


def cmd_watch(settings: Settings, args) -> int:
    with _client(settings) as client:
        status = client.campaign(args.id).wait(progress=True, poll_s=args.interval)
    print(json.dumps(status, indent=2))
    print(usage_line(status["usage"]), file=sys.stderr)  # stdout stays one JSON document
    return 0 if status["counts"]["failed"] == 0 else 1


def usage_line(u: dict) -> str:
    """One line: images, compute seconds by stage, and the cost when prices are set."""
    stages = ", ".join(
        f"{stage} {sum(per.values()):.1f} s" for stage, per in sorted(u["compute_s"].items())
    )
    cost = f"; estimated cost {u['cost']:.4f} {u['currency']}" if u.get("cost") is not None else ""
    return f"usage: {u['images']} images; compute {stages or '0 s'}{cost}"


def cmd_limits(settings: Settings, args) -> int:
    from farm.limits import markdown_limits

    print(markdown_limits())
    return 0


def cmd_feeder(settings: Settings, args) -> int:
    from farm import feeder

    feeder.main()
    return 0


def cmd_usage(settings: Settings, args) -> int:
    with _client(settings) as client:
        u = client.usage()
    if args.json:
        print(json.dumps(u, indent=2))
        return 0
    print(f"tenant {u['tenant']}, {u['campaigns']} campaigns")
    print(usage_line(u))
    for stage, per in sorted(u["compute_s"].items()):
        for family, seconds in sorted(per.items()):
            print(f"  {stage:8} {family:24} {seconds:10.1f} s")
    return 0


def cmd_ls(settings: Settings, args) -> int:
    with _client(settings) as client:
        rows = client.campaigns(limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'campaign':32}  {'state':9}  {'done':>7}/{'total':<7}  {'failed':>6}  name")
    for r in rows:
        c = r["counts"]
        print(
            f"{r['id']:32}  {r['state']:9}  {c['done']:>7}/{r['total']:<7}  {c['failed']:>6}  {r['name'] or ''}"
        )
    return 0


def cmd_results(settings: Settings, args) -> int:
    with _client(settings) as client:
        handle = client.campaign(args.id)
        if args.download:
            got = handle.download_all(args.download)
            print(f"downloaded {len(got['images'])} images to {args.download}")
            note = "" if got["finished"] else "  (still running: the jobs so far)"
            print(f"results:       {got['results']}{note}")
            sheet = got["contact_sheet"] or "none yet (written when the campaign finishes)"
            print(f"contact sheet: {sheet}")
            return 0
        for job in handle.results(state=args.state):
            print(json.dumps(job, ensure_ascii=False))
    return 0


def cmd_cancel(settings: Settings, args) -> int:
    with _client(settings) as client:
        status = client.campaign(args.id).cancel()
    print(json.dumps(status["counts"]))
    return 0


def cmd_resume(settings: Settings, args) -> int:
    with _client(settings) as client:
        out = client.request("POST", f"/v1/campaigns/{args.id}/resume")
    print(f"requeued {out['requeued']} jobs; {out['present']} images already present")
    return 0


def cmd_retry(settings: Settings, args) -> int:
    with _client(settings) as client:
        n = client.campaign(args.id).retry_failed()
    print(f"requeued {n} failed jobs")
    return 0


def cmd_gallery(settings: Settings, args) -> int:
    """Print (and with --open, open) a sign-in link to the campaign's gallery page."""
    with _client(settings) as client:
        link = client.request("POST", f"/v1/campaigns/{args.id}/gallery-link")
        url = str(client.http.base_url).rstrip("/") + link["path"]
    print(url)
    minutes = link["expires_in_s"] // 60
    print(f"(a sign-in link for one browser: open it within {minutes} minutes)", file=sys.stderr)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return 0


def cmd_models(settings: Settings, args) -> int:
    from farm.local import models

    settings = settings.with_stack()  # a running stack's families, unless FARM_MODELS says
    families = _with(settings, models=args.family).enabled_families if args.family else None
    families = families or settings.enabled_families
    if args.models_command == "build":
        if args.out:
            settings = _with(settings, state_dir=Path(args.out))
        if args.full_size:  # minutes and GBs: say each component as it is written
            built = models.build_full(settings, families, force=args.force, progress=print)
        else:
            built = models.build_tiny(settings, families, force=args.force)
        for folder in built:
            print(f"built {folder}")
        return 0
    if args.models_command == "fetch":
        for repo in models.fetch(settings, families):
            print(f"fetched {repo}")
        return 0
    rows = models.rows(settings, families)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = "ok" if r["ok"] else "MISSING"
            print(f"{r['family']:20} {r['part']:12} {r['stage']:8} {state:8} {r['location']}")
            if r["problem"] and args.models_command == "verify":
                print(f"  {r['problem']}")
    bad = [r for r in rows if not r["ok"]]
    return 1 if bad and args.models_command == "verify" else 0


def cmd_bench(settings: Settings, args) -> int:
    from farm.local import bench
    from farm.local.stack import parse_workers

    if args.batch:
        settings = _with(settings, batch_max=args.batch)
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
    served = _with(settings, models=args.models).enabled_families if args.models else None
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
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if settings.uses_tiny_for(families):
        env.setdefault("HF_HUB_OFFLINE", "1")
    print(f"farm worker {node}: {args.stage} for {', '.join(families)}", file=sys.stderr)
    os.execvpe(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.main", *argv], env)
    return 0  # not reached


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="Kandinsky render farm")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also FARM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start the local stack (servers, workers, Flower, API)")
    u.add_argument(
        "--models", help="families the stack accepts and its workers serve (default: all)"
    )
    u.add_argument(
        "--workers", help="workers per stage, e.g. prior=1,decoder=2 (default: one each)"
    )
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
    sub.add_parser("down", help="stop the local stack")
    st = sub.add_parser("status", help="endpoints and state of the local stack")
    st.add_argument("--json", action="store_true", help="machine-readable output")
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
    s = sub.add_parser("submit", help="submit a campaign file (YAML/JSON object, or JSONL of jobs)")
    s.add_argument("file")
    s.add_argument(
        "--idempotency-key", help="resubmitting with the same key returns the same campaign"
    )
    s.add_argument("--wait", action="store_true", help="then watch it to the end")
    w = sub.add_parser("watch", help="live progress of a campaign")
    w.add_argument("id")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    sub.add_parser("limits", help="every limit a job is checked against (markdown)")
    sub.add_parser("feeder", help="feed the queues from the campaigns in S3 (farm up runs one)")
    us = sub.add_parser("usage", help="what your campaigns used: images, compute, cost")
    us.add_argument("--json", action="store_true")
    ls = sub.add_parser("ls", help="your campaigns, newest first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    r = sub.add_parser(
        "results", help="a campaign's jobs as JSON lines, or download images, results, sheet"
    )
    r.add_argument("id")
    r.add_argument(
        "--state", choices=["queued", "prior", "decoding", "done", "failed", "cancelled"]
    )
    r.add_argument(
        "--download",
        metavar="DIR",
        help="save every done image, results.jsonl and contact_sheet.png into DIR",
    )
    for name, text in (
        ("cancel", "cancel a campaign"),
        ("resume", "re-enqueue jobs whose image is missing"),
        ("retry", "re-enqueue failed jobs"),
    ):
        sub.add_parser(name, help=text).add_argument("id")
    g = sub.add_parser("gallery", help="a link to the campaign's gallery page (live, in a browser)")
    g.add_argument("id")
    g.add_argument("--open", action="store_true", help="open it in the default browser")
    sub.add_parser("settings", help="every FARM_* setting with its default (markdown)")
    sub.add_parser("capabilities", help="model x task matrix (markdown)")
    up = sub.add_parser("upload", help="upload an input image; prints its in:... reference")
    up.add_argument("file")
    m = sub.add_parser(
        "models", help="every part of the model families: list, verify, build, fetch"
    )
    msub = m.add_subparsers(dest="models_command", required=True)
    for name, text in (
        ("list", "each part: family, stage, where it is, whether it is there"),
        ("verify", "check every part a worker would load (exit 1 naming what is missing)"),
        ("build", "build the tiny random-weight parts set to 'tiny' (offline)"),
        ("fetch", "download the hub weights into the Hugging Face cache (needs hub access)"),
    ):
        mp = msub.add_parser(name, help=text)
        mp.add_argument("family", nargs="?", help="families, comma-separated (default: enabled)")
        if name in ("list", "verify"):
            mp.add_argument("--json", action="store_true")
        if name == "build":
            mp.add_argument("--out", help="state folder to build under (default FARM_STATE_DIR)")
            mp.add_argument("--force", action="store_true", help="rebuild what exists")
            mp.add_argument(
                "--full-size",
                action="store_true",
                help="random weights of the published architecture (GBs; FARM_STAND_IN=full)",
            )
    add_plan_parser(sub)
    return p


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "demo": cmd_demo,
    "models": cmd_models,
    "worker": cmd_worker,
    "bench": cmd_bench,
    "settings": cmd_settings,
    "capabilities": cmd_capabilities,
    "upload": cmd_upload,
    "submit": cmd_submit,
    "watch": cmd_watch,
    "ls": cmd_ls,
    "usage": cmd_usage,
    "feeder": cmd_feeder,
    "limits": cmd_limits,
    "results": cmd_results,
    "cancel": cmd_cancel,
    "resume": cmd_resume,
    "retry": cmd_retry,
    "gallery": cmd_gallery,
    "plan": cmd_plan,
}


# What to do about an error, when its message alone does not say.
HINTS = {
    Unauthorized: "check FARM_API_TOKEN (a local stack's token: `farm status --json`)",
    NotFound: "`farm ls` lists your campaigns",
    QuotaExceeded: "wait for your queued jobs to drain, or cancel some (`farm ls`, `farm cancel`)",
}
# Exit 2: the input or the settings need fixing. Exit 1: something else failed (an outage).
USER_ERRORS = (InvalidJob, NotFound, Unauthorized, Conflict, ConfigError, QuotaExceeded)


def error_line(exc: BaseException) -> str:
    """One line naming what went wrong and what to fix, for any error a command raises."""
    cause = exc.__cause__
    if isinstance(exc, ConfigError) and hasattr(cause, "errors"):  # pydantic's ValidationError
        parts = [
            f"FARM_{'_'.join(str(x) for x in e['loc']).upper()}: {e['msg']} "
            f"(got {e.get('input')!r})"
            for e in cause.errors()
        ]
        return "invalid setting: " + "; ".join(parts)
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror or exc}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(lines) > 1:  # a log tail or a list: its last line says most
        text = f"{text.rstrip(':')}: {lines[-1]}"
    hint = next((h for cls, h in HINTS.items() if isinstance(exc, cls)), None)
    return f"{text} ({hint})" if hint else text


def main(argv: list[str] | None = None) -> int:
    import os

    args = parser().parse_args(argv)
    debug = args.debug or os.environ.get("FARM_DEBUG", "") not in ("", "0")
    try:
        settings = Settings.load()
        return COMMANDS[args.command](settings, args)
    except KeyboardInterrupt:
        return 130
    except (FarmError, OSError, UnicodeDecodeError) as e:
        if debug:
            raise
        print(f"farm: error: {error_line(e)}", file=sys.stderr)
        user = isinstance(e, USER_ERRORS) or (isinstance(e, OSError) and e.filename)
        return 2 if user else 1
    except Exception as e:  # a bug: still one line, the traceback behind --debug
        if debug:
            raise
        print(
            f"farm: internal error: {type(e).__name__}: {error_line(e)} "
            "(rerun with --debug or FARM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
