"""A decoder worker placed on one family against one that loads every family: resident parts, RSS.

Same run, same machine: each configuration gets its own local stack (embedded servers, one decoder
worker, no prior worker), and the worker's memory is read from the fleet status it publishes.

    .venv/bin/python bench/worker_memory.py [--families kandinsky-2.2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(models: str | None, state: Path) -> dict:
    from farm.local.stack import Stack, fleet_status
    from farm.settings import Settings

    settings = Settings.load(state_dir=state, api_port=0, flower_port=0, models=models)
    stack = Stack(settings)
    try:
        stack.up(workers={"prior": 0, "decoder": 1}, timeout=300)
        live = settings.with_stack()
        # The pool process reports after loading; wait for its report.
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (worker,) = fleet_status(live)["workers"] or [None]
            if worker and worker["resident_parts"]:
                return worker
            time.sleep(0.5)
        raise RuntimeError("the worker never reported")
    finally:
        stack.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="kandinsky-2.2", help="the placed worker's families")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, models in (("every family", None), (args.families, args.families)):
            w = measure(models, Path(tmp) / label.replace(" ", "-").replace(",", "_"))
            rows.append((label, w))
            print(
                f"{label:28} parts {len(w['resident_parts']):>2}  "
                f"weights {w['weights_bytes'] / 2**20:6.2f} MiB  RSS {w['rss_bytes'] / 2**20:5.0f} MiB  "
                f"({', '.join(w['resident_parts'])})"
            )
        (_, every), (_, placed) = rows
        print(
            f"placed / every family: weights {placed['weights_bytes'] / every['weights_bytes']:.2f}, "
            f"RSS {placed['rss_bytes'] / every['rss_bytes']:.2f}"
        )


if __name__ == "__main__":
    main()
