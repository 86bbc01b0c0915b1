"""``farm export``: a campaign's images as a dataset (WebDataset tars or Parquet shards)."""

from __future__ import annotations

import argparse
import json
import re
import sys

from farm.settings import Settings

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def parse_size(text: str) -> int:
    """``1073741824``, ``512MiB``, ``1GB``, ``200k``: a byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]i?)?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 512MiB, 1000000)")
    return int(match.group(1)) * _UNITS[match.group(2) or ""]


def cmd_export(settings: Settings, args) -> int:
    from farm.client import Client
    from farm.export import export_campaign

    with Client.from_settings(settings) as client:
        handle = client.campaign(args.id)
        stats = export_campaign(
            handle,
            args.out,
            format=args.format,
            shard_size=args.shard_size,
            shard_bytes=args.shard_bytes,
            state=args.state,
            resume=not args.overwrite,
            progress=not args.json and sys.stderr.isatty(),
            concurrency=args.concurrency,
            prefix=args.prefix,
        )
    if args.json:
        print(json.dumps(stats.summary(), indent=2))
    else:
        kept = f" ({stats.kept_shards} kept from the interrupted run)" if stats.resumed else ""
        print(
            f"exported {stats.samples} images of {stats.jobs} jobs into {len(stats.shards)} "
            f"{args.format} shards{kept}: {stats.bytes / 1e6:.1f} MB in {args.out}"
        )
        if stats.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(stats.skipped.items()))
            print(f"skipped: {reasons} (each listed in {args.out}/{stats.skipped_file})")
    if stats.note:
        print(f"note: {stats.note}", file=sys.stderr)
    return 0


def _parse_export(sub) -> None:
    from farm.export import FORMATS, STATES

    e = sub.add_parser(
        "export",
        help="a campaign's images as a dataset: WebDataset tars or Parquet shards",
        description="Stream a campaign's done images from S3 into shards, with each job's "
        "prompt, seed, spec, timings and S3 key. Rerunning resumes an interrupted export.",
    )
    e.add_argument("id", help="the campaign id")
    e.add_argument("--format", choices=FORMATS, default="webdataset")
    e.add_argument("--out", required=True, metavar="DIR", help="folder for the shards")
    e.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="samples a shard (1000)"
    )
    e.add_argument(
        "--shard-bytes",
        type=parse_size,
        default=1 << 30,
        metavar="SIZE",
        help="bytes a shard, whichever limit comes first (1GiB)",
    )
    e.add_argument(
        "--state",
        choices=STATES,
        default="done",
        help="jobs to export (done); 'all' adds the others' records, without images",
    )
    e.add_argument("--concurrency", type=int, default=16, help="parallel S3 GETs (16)")
    e.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar (shard)")
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="start again, replacing an export in DIR, instead of resuming it",
    )
    e.add_argument("--json", action="store_true", help="print the export's stats as JSON")


COMMANDS = {"export": (cmd_export, _parse_export)}
