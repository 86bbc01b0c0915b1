"""``farm models list|build|verify|fetch``: every part of the chosen families, where it is, and
whether a worker would start with it. All of it read from the family registry."""

from __future__ import annotations

import shutil
from pathlib import Path

from farm.errors import ModelError
from farm.families import fullsize, get
from farm.families.loading import verify
from farm.families.tiny import is_tiny
from farm.settings import Settings


def _stand_in(settings: Settings, part) -> str | None:
    """'tiny' or 'full' for a part the farm builds itself; None for real weights."""
    if not settings.is_tiny_location(part):
        return None
    return "full" if Path(settings.location(part)).parent.name == "full" else "tiny"


def rows(settings: Settings, families) -> list[dict]:
    """One row per part: family, part, stage, setting, location, and what is wrong (or None)."""
    out = []
    for name in families:
        family = get(name)
        for part in family.parts:
            location = settings.location(part)
            try:
                verify(family, part, location, tiny=settings.is_tiny_location(part))
                problem = None
            except ModelError as e:
                problem = str(e)
            on_disk = fullsize.weight_bytes(location) if Path(location).is_dir() else {}
            out.append(
                {
                    "family": name,
                    "part": part.name,
                    "stage": part.stage,
                    "setting": part.env,
                    "hub_id": part.hub_id,
                    "location": location,
                    "tiny": settings.is_tiny_location(part),
                    "stand_in": _stand_in(settings, part),
                    # From the safetensors headers on disk (None: not there, or a hub id).
                    "parameters": on_disk.get("parameters"),
                    "bytes": on_disk.get("bytes"),
                    "ok": problem is None,
                    "problem": problem,
                }
            )
    return out


def build_tiny(settings: Settings, families, *, force: bool = False) -> list[Path]:
    """Build the tiny random-weight parts of ``families`` that are set to 'tiny' and missing.

    Returns:
        The folders written.
    """
    built: list[Path] = []
    for name in families:
        for part in get(name).parts:
            if _stand_in(settings, part) != "tiny":
                continue  # real weights, or a full-size stand-in (build_full)
            folder = settings.tiny_dir / part.tiny
            if folder in built or (not force and _intact(get(name), part, folder)):
                continue
            if folder.exists():
                shutil.rmtree(folder)  # broken or forced: build it whole again
            part.build_tiny(folder)
            built.append(folder)
    return built


def build_full(settings: Settings, families, *, force: bool = False, progress=None) -> list[Path]:
    """Build the full-size stand-ins of ``families``' parts that have a published config
    (``farm/families/full/``) and are set to 'tiny'; the other parts get their tiny build.

    Returns:
        The folders written.
    """
    full = settings.model_copy(update={"stand_in": "full"})
    built: list[Path] = []
    for name in families:
        for part in get(name).parts:
            config = fullsize.config_dir(part)
            if not settings.is_tiny_location(part) or config is None:
                continue
            folder = Path(full.location(part))
            if folder in built or (not force and _whole(get(name), part, folder)):
                continue
            if folder.exists():
                shutil.rmtree(folder)
            fullsize.build(config, folder, family=name, progress=progress)
            built.append(folder)
    return built + build_tiny(full, families, force=force)


def _whole(family, part, folder: Path) -> bool:
    """A full-size build that finished (its marker is written last) and is whole."""
    if not fullsize.is_full(folder):
        return False
    try:
        verify(family, part, str(folder), tiny=True)
    except ModelError:
        return False
    return True


def _intact(family, part, folder: Path) -> bool:
    """A tiny build that is there and whole (a deleted component means: build again)."""
    if not is_tiny(folder):
        return False
    try:
        verify(family, part, str(folder), tiny=True)
    except ModelError:
        return False
    return True


def fetch(settings: Settings, families) -> list[str]:
    """Download the hub weights of ``families`` into the Hugging Face cache (needs hub access)."""
    from huggingface_hub import snapshot_download

    done = []
    for name in families:
        for part in get(name).parts:
            location = settings.location(part) if not settings.is_tiny_location(part) else None
            repo = location if location and not Path(location).exists() else part.hub_id
            if repo in done:
                continue
            snapshot_download(repo)
            done.append(repo)
    return done
