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
