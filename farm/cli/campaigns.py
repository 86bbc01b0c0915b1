"""``farm`` commands that talk to a farm's API: submit, watch and manage campaigns, upload
inputs, read usage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from farm.errors import InvalidJob
from farm.settings import Settings


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
    import farm.cli.prompts as prompts

    path = Path(args.file)
    from_prompts = prompts.is_prompts_file(path)
    ignored: list[str] = []
    if from_prompts:
        body, ignored = prompts.campaign(
            path, seeds=args.seeds, model=args.model, sets=args.set, name=args.name
        )
    else:
        given = [o for o, v in (("--seeds", args.seeds), ("--model", args.model)) if v]
        given += ["--set"] if args.set else []
        if given:
            raise InvalidJob(
                given[0],
                f"applies to a prompts file ({', '.join(prompts.SUFFIXES)}); {path.name} is a "
                "campaign file: write it there (grid.seeds, defaults)",
            )
        body = load_campaign_file(path)
        if args.name:
            body["name"] = args.name
    with _client(settings) as client:
        try:
            # The body as written: the API checks every key (priority and callback_url are kept,
            # a misspelt key is refused), not only the ones the client's arguments name.
            handle = client.submit_body(body, idempotency_key=args.idempotency_key)
        except InvalidJob as e:
            raise (prompts.option_of(e, path) if from_prompts else e) from None
        note = "" if handle.created else " (existing campaign for this Idempotency-Key)"
        print(f"campaign {handle.id}: {handle.job_count} jobs{note}")
        if ignored:  # said after the submission: an error stays the one line on stderr
            columns = ", ".join(repr(c) for c in ignored)
            print(
                f"note: {path.name}: only the 'prompt' column was read, not {columns}",
                file=sys.stderr,
            )
        if args.wait:
            status = handle.wait(progress=True)
            print(json.dumps(status["counts"]))
    return 0


def cmd_upload(settings: Settings, args) -> int:
    with _client(settings) as client:
        print(client.upload(Path(args.file)))
    return 0


def cmd_watch(settings: Settings, args) -> int:
    with _client(settings) as client:
        status = client.campaign(args.id).wait(progress=True, poll_s=args.interval)
    print(status.model_dump_json(indent=2))
    print(usage_line(status["usage"]), file=sys.stderr)  # stdout stays one JSON document
    return 0 if status["counts"]["failed"] == 0 else 1


def usage_line(u: dict) -> str:
    """One line: images, compute seconds by stage, and the cost when prices are set."""
    stages = ", ".join(
        f"{stage} {sum(per.values()):.1f} s" for stage, per in sorted(u["compute_s"].items())
    )
    cost = f"; estimated cost {u['cost']:.4f} {u['currency']}" if u.get("cost") is not None else ""
    return f"usage: {u['images']} images; compute {stages or '0 s'}{cost}"


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
        print(json.dumps([r.model_dump() for r in rows], indent=2))
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
            print(json.dumps(job.model_dump(), ensure_ascii=False))
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


def _parse_submit(sub) -> None:
    s = sub.add_parser(
        "submit",
        help="submit a campaign file (YAML/JSON object, JSONL of jobs) or a prompts file "
        "(.txt one per line, .csv/.parquet with a prompt column)",
    )
    s.add_argument("file")
    s.add_argument(
        "--seeds",
        metavar="N|A-B|A,B,...",
        help="prompts file: N seeds drawn and recorded, or these seeds (0-3, 7,42, 42,); "
        "default 1 drawn",
    )
    s.add_argument("--model", help="prompts file: the model family (`farm models`)")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="prompts file: a job field for every job (height=768, guidance_scale=7.5); "
        "repeatable; values read as JSON where they parse",
    )
    s.add_argument("--name", help="the campaign's name (a prompts file: default its file name)")
    s.add_argument(
        "--idempotency-key", help="resubmitting with the same key returns the same campaign"
    )
    s.add_argument("--wait", action="store_true", help="then watch it to the end")


def _parse_watch(sub) -> None:
    w = sub.add_parser("watch", help="live progress of a campaign")
    w.add_argument("id")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between polls")


def _parse_usage(sub) -> None:
    us = sub.add_parser("usage", help="what your campaigns used: images, compute, cost")
    us.add_argument("--json", action="store_true")


def _parse_ls(sub) -> None:
    ls = sub.add_parser("ls", help="your campaigns, newest first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")


def _parse_results(sub) -> None:
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


def _parse_id(name: str, text: str):
    return lambda sub: sub.add_parser(name, help=text).add_argument("id")


def _parse_gallery(sub) -> None:
    g = sub.add_parser("gallery", help="a link to the campaign's gallery page (live, in a browser)")
    g.add_argument("id")
    g.add_argument("--open", action="store_true", help="open it in the default browser")


def _parse_upload(sub) -> None:
    up = sub.add_parser("upload", help="upload an input image; prints its in:... reference")
    up.add_argument("file")


# name -> (its handler, what adds its parser to the `farm` command's subparsers)
COMMANDS = {
    "submit": (cmd_submit, _parse_submit),
    "watch": (cmd_watch, _parse_watch),
    "usage": (cmd_usage, _parse_usage),
    "ls": (cmd_ls, _parse_ls),
    "results": (cmd_results, _parse_results),
    "cancel": (cmd_cancel, _parse_id("cancel", "cancel a campaign")),
    "resume": (cmd_resume, _parse_id("resume", "re-enqueue jobs whose image is missing")),
    "retry": (cmd_retry, _parse_id("retry", "re-enqueue failed jobs")),
    "gallery": (cmd_gallery, _parse_gallery),
    "upload": (cmd_upload, _parse_upload),
}
