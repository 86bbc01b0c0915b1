"""``farm`` commands about the models and what the farm accepts: the model parts (list, verify,
build, fetch), the settings, limits and capabilities tables, and the stage balance (plan)."""

from __future__ import annotations

import json
from pathlib import Path

from farm.cli.common import with_values
from farm.plan_cli import add_parser as add_plan_parser
from farm.plan_cli import cmd_plan
from farm.settings import Settings


def cmd_settings(settings: Settings, args) -> int:
    print(Settings.markdown_table())
    return 0


def cmd_capabilities(settings: Settings, args) -> int:
    from farm.families import markdown_matrix

    print(markdown_matrix())
    return 0


def cmd_limits(settings: Settings, args) -> int:
    from farm.limits import markdown_limits

    print(markdown_limits())
    return 0


def cmd_models(settings: Settings, args) -> int:
    from farm.local import models

    settings = settings.with_stack()  # a running stack's families, unless FARM_MODELS says
    families = with_values(settings, models=args.family).enabled_families if args.family else None
    families = families or settings.enabled_families
    if args.models_command == "build":
        if args.out:
            settings = with_values(settings, state_dir=Path(args.out))
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


def _parse_models(sub) -> None:
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


def _parse_plain(name: str, text: str):
    return lambda sub: sub.add_parser(name, help=text)


# name -> (its handler, what adds its parser to the `farm` command's subparsers)
COMMANDS = {
    "limits": (
        cmd_limits,
        _parse_plain("limits", "every limit a job is checked against (markdown)"),
    ),
    "settings": (
        cmd_settings,
        _parse_plain("settings", "every FARM_* setting with its default (markdown)"),
    ),
    "capabilities": (
        cmd_capabilities,
        _parse_plain("capabilities", "model x task matrix (markdown)"),
    ),
    "models": (cmd_models, _parse_models),
    "plan": (cmd_plan, add_plan_parser),
}
