"""The ``farm`` command: local stack, demo, tiny models. Settings are built here, once."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from farm.errors import FarmError
from farm.settings import Settings


def _stack(settings: Settings):
    from farm.stack import Stack

    return Stack(settings)


def cmd_up(settings: Settings, args) -> int:
    from farm.stack import mask

    stack = _stack(settings)
    if stack.running():
        print(f"already running (state in {stack.dir})")
        return 0
    state = stack.up()
    print(f"redis:  {mask(state['redis_url'])}")
    print(f"s3:     {state['s3_endpoint']}  bucket {state['bucket']}")
    print(f"flower: {state['flower_url']}")
    print(f"api:    {state['api_url']}  (docs: {state['api_url']}/docs)")
    if not settings.api_tokens:
        print(f"token:  {state['token']}  (generated; `farm` commands here pick it up themselves)")
    print(f"logs:   {stack.dir / 'logs'}")
    return 0


def cmd_down(settings: Settings, args) -> int:
    stopped = _stack(settings).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(settings: Settings, args) -> int:
    from farm.stack import mask

    status = _stack(settings).status()
    if args.json:
        print(json.dumps(status, indent=2))
    elif not status.get("processes"):
        print(f"not running (state folder {status['state_dir']})")
    else:
        print(f"redis:   {mask(status['redis_url'])}")
        print(f"s3:      {status['s3_endpoint']}  bucket {status['bucket']}")
        print(f"flower:  {status['flower_url']}")
        print(f"api:     {status['api_url']}")
        print("workers: " + ", ".join(f"{q}={n}" for q, n in status["workers"].items()))
        for name, p in status["processes"].items():
            print(f"  {name:15} pid {p['pid']:>7}  {'up' if p['alive'] else 'DOWN'}")
    return 0 if status.get("running") else 3


def cmd_demo(settings: Settings, args) -> int:
    from farm import demo

    demo.run(
        settings, out_dir=Path(args.out), size=args.size, steps=args.steps, keep_up=args.keep_up
    )
    return 0


def _client(settings: Settings):
    from farm.client import Client

    return Client.from_settings(settings)


def load_campaign_file(path: Path) -> dict:
    """A campaign from YAML or JSON (an object with jobs or grid), or JSONL (one job a line)."""
    import yaml

    from farm.errors import InvalidJob

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
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InvalidJob(path.name, f"cannot parse: {e}") from None
    if isinstance(data, list):
        return {"jobs": data}
    if not isinstance(data, dict):
        raise InvalidJob(path.name, "must hold a campaign object or a list of jobs")
    return data


def cmd_submit(settings: Settings, args) -> int:
    body = load_campaign_file(Path(args.file))
    with _client(settings) as client:
        handle = client.submit_campaign(
            body.get("jobs"),
            grid=body.get("grid"),
            defaults=body.get("defaults"),
            name=body.get("name"),
            idempotency_key=args.idempotency_key,
        )
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
    from farm.capabilities import markdown_matrix

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
    return 0 if status["counts"]["failed"] == 0 else 1


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
            files = handle.download(args.download)
            print(f"downloaded {len(files)} images to {args.download}")
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


def cmd_models_tiny(settings: Settings, args) -> int:
    from farm.models.tiny import build_k22

    paths = build_k22(Path(args.out))
    for stage, path in paths.items():
        print(f"{stage}: {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="Kandinsky render farm")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local stack (servers, workers, Flower)")
    sub.add_parser("down", help="stop the local stack")
    st = sub.add_parser("status", help="endpoints and state of the local stack")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    d = sub.add_parser("demo", help="render a small campaign end to end")
    d.add_argument("--out", default="out/demo", help="folder for images and the contact sheet")
    d.add_argument("--size", type=int, help="height and width (multiple of 64)")
    d.add_argument("--steps", type=int, help="decoder inference steps")
    d.add_argument("--keep-up", action="store_true", help="leave the stack running afterwards")
    s = sub.add_parser("submit", help="submit a campaign file (YAML/JSON object, or JSONL of jobs)")
    s.add_argument("file")
    s.add_argument(
        "--idempotency-key", help="resubmitting with the same key returns the same campaign"
    )
    s.add_argument("--wait", action="store_true", help="then watch it to the end")
    w = sub.add_parser("watch", help="live progress of a campaign")
    w.add_argument("id")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    ls = sub.add_parser("ls", help="your campaigns, newest first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    r = sub.add_parser("results", help="a campaign's jobs as JSON lines, or download its images")
    r.add_argument("id")
    r.add_argument(
        "--state", choices=["queued", "prior", "decoding", "done", "failed", "cancelled"]
    )
    r.add_argument("--download", metavar="DIR", help="save every done image into DIR")
    for name, text in (
        ("cancel", "cancel a campaign"),
        ("resume", "re-enqueue jobs whose image is missing"),
        ("retry", "re-enqueue failed jobs"),
    ):
        sub.add_parser(name, help=text).add_argument("id")
    sub.add_parser("settings", help="every FARM_* setting with its default (markdown)")
    sub.add_parser("capabilities", help="model x task matrix (markdown)")
    up = sub.add_parser("upload", help="upload an input image; prints its in:... reference")
    up.add_argument("file")
    m = sub.add_parser("models", help="model utilities")
    msub = m.add_subparsers(dest="models_command", required=True)
    t = msub.add_parser("tiny", help="build the tiny random-weight pipelines (offline)")
    t.add_argument("--out", required=True, help="folder to write prior/ and decoder/ into")
    return p


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "demo": cmd_demo,
    "models": cmd_models_tiny,
    "settings": cmd_settings,
    "capabilities": cmd_capabilities,
    "upload": cmd_upload,
    "submit": cmd_submit,
    "watch": cmd_watch,
    "ls": cmd_ls,
    "results": cmd_results,
    "cancel": cmd_cancel,
    "resume": cmd_resume,
    "retry": cmd_retry,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.load()
        return COMMANDS[args.command](settings, args)
    except FarmError as e:
        print(f"farm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
