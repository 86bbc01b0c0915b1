"""The ``farm`` command: local stack, demo, tiny models. Settings are built here, once.

Each command group is a module (``stack``, ``campaigns``, ``models``) holding its commands and
their parsers; this one assembles the parser, runs a command and maps its errors to one line.
"""

from __future__ import annotations

import argparse
import sys

import pydantic

from farm.cli import campaigns, export, models, stack
from farm.cli.campaigns import load_campaign_file, usage_line
from farm.cli.stack import step_printer
from farm.errors import (
    ConfigError,
    Conflict,
    FarmError,
    InvalidJob,
    NotFound,
    QuotaExceeded,
    Unauthorized,
)
from farm.settings import Settings

_GROUPS = {**stack.COMMANDS, **campaigns.COMMANDS, **export.COMMANDS, **models.COMMANDS}
# The order `farm --help` lists them in.
_ORDER = (
    "up",
    "bench",
    "worker",
    "down",
    "status",
    "demo",
    "submit",
    "watch",
    "limits",
    "feeder",
    "usage",
    "ls",
    "results",
    "export",
    "cancel",
    "resume",
    "retry",
    "gallery",
    "settings",
    "capabilities",
    "upload",
    "models",
    "plan",
)
COMMANDS = {name: _GROUPS[name][0] for name in _ORDER}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="Kandinsky render farm")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also FARM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    for name in _ORDER:
        _GROUPS[name][1](sub)
    return p


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
    if isinstance(exc, ConfigError) and isinstance(cause, pydantic.ValidationError):
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


__all__ = [
    "COMMANDS",
    "HINTS",
    "USER_ERRORS",
    "error_line",
    "load_campaign_file",
    "main",
    "parser",
    "step_printer",
    "usage_line",
]
