"""The gallery's templates: shipped with the package, and rendered with autoescaping on."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from api import gallery_page

ROOT = Path(__file__).resolve().parents[1]


def test_every_template_ships_with_the_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"].get("api", [])
    templates = sorted(
        p.relative_to(ROOT / "api").as_posix() for p in gallery_page.TEMPLATES.iterdir()
    )
    assert templates, "no templates found"
    for name in templates:
        assert any(fnmatch.fnmatch(name, g) for g in globs), f"{name} not in package-data {globs}"


def test_templates_escape_what_they_are_given():
    # Autoescape is on for every template, so text that reaches one without the page code's help
    # (a new field, a new template) is still escaped.
    page = gallery_page.render_error(404, "<script>x</script>", "a\"b'c&", "n0nce")
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "a&#34;b&#39;c&amp;" in page and '<style nonce="n0nce">' in page
