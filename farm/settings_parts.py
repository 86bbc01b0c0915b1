"""What the settings read from the family registry: the per-part model settings
(``FARM_DECODER_MODEL`` ...), the family lists (``FARM_MODELS``) and the reference table.

The registry is imported inside each function: reading settings does not load the families.
"""

from __future__ import annotations

from pydantic_settings import PydanticBaseSettingsSource

from farm.errors import ConfigError


class PartLocations(PydanticBaseSettingsSource):
    """``FARM_<PART SETTING>`` variables (``FARM_DECODER_MODEL`` ...) as ``locations``.

    The names come from the family registry, so a newly registered family's parts are settings
    too, with no field to add here.
    """

    def get_field_value(self, field, field_name):
        return None, field_name, False

    def __call__(self) -> dict:
        import os

        from farm.families import part_settings

        found = {
            name: os.environ[part.env]
            for name, part in part_settings().items()
            if os.environ.get(part.env)
        }
        return {"locations": found} if found else {}


def file_part_kwargs(data):
    """``Settings(decoder_model=...)`` in code reads like the variable; file it under locations."""
    if isinstance(data, dict):
        from farm.families import part_settings

        moved = {k: data[k] for k in part_settings() if k in data}
        if moved:
            rest = {k: v for k, v in data.items() if k not in moved}
            data = {**rest, "locations": {**dict(data.get("locations") or {}), **moved}}
    return data


def families(value: str | None, variable: str) -> tuple[str, ...]:
    """The registered families a comma-separated setting names (unset, all or *: every one)."""
    from farm.families import REGISTRY

    if not value or value.strip() in ("", "all", "*"):
        return tuple(REGISTRY)
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(
            f"{variable}: unknown model family {', '.join(unknown)}; known: {', '.join(REGISTRY)}"
        )
    return names


def markdown_table(settings_cls) -> str:
    """Every setting with its default, as docs/settings.md's table (`farm settings`)."""
    rows = ["| variable | default | what it is |", "|---|---|---|"]
    for name, field in settings_cls.model_fields.items():
        if name == "locations":
            continue
        default = "unset" if field.default is None else f"`{field.default}`"
        rows.append(f"| `FARM_{name.upper()}` | {default} | {field.description} |")
    from farm.families import part_settings

    for part in part_settings().values():
        rows.append(
            f"| `{part.env}` | `tiny` | {part.description}: hub id (`{part.hub_id}`, from the "
            "HF cache), a local folder, or 'tiny'. |"
        )
    return "\n".join(rows)
