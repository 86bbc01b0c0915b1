"""What the command groups share: the settings with some values replaced."""

from __future__ import annotations

from farm.settings import Settings


def with_values(settings: Settings, **update) -> Settings:
    """The settings with some values replaced, validated again."""
    raw = {k: v for k, v in settings.model_dump().items() if v is not None}
    return Settings.load(**{**raw, **update})
