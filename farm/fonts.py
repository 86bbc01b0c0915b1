"""Fonts for captions in any script, and text split into runs each font can draw.

No single font covers Latin, Arabic and Chinese/Korean. Captions are split into runs, each drawn
with the first font (in ``PREFERRED`` order, then any other installed font) whose character map
(read with fontTools) holds every character of the run. A character no installed font holds is
replaced by its escaped code point (``<U+1F600>``), never drawn as a box (tofu).

Fonts come from the system font folders: ``make install`` puts Debian's fonts-noto-core and
fonts-noto-cjk there when apt is available. With no font at all, Pillow's built-in font draws
ASCII and everything else is escaped.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FONT_DIRS = (
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".local/share/fonts",
    Path.home() / ".fonts",
)
# File name, and for a collection (.ttc) the family of the face to use. Latin first: the CJK
# fonts also hold Latin letters, drawn better by a Latin font.
PREFERRED = (
    ("NotoSans-Regular.ttf", None),
    ("NotoSansArabic-Regular.ttf", None),
    ("NotoNaskhArabic-Regular.ttf", None),
    ("NotoSansCJK-Regular.ttc", "Noto Sans CJK SC"),
    ("NotoSansCJKsc-Regular.otf", None),
    ("NotoSansHebrew-Regular.ttf", None),
    ("DejaVuSans.ttf", None),
    ("wqy-microhei.ttc", None),
    ("DroidSansFallbackFull.ttf", None),
)
PACKAGES = ("fonts-noto-core", "fonts-noto-cjk")  # Debian packages that provide PREFERRED
RTL_CLASSES = {"R", "AL"}


@dataclass(frozen=True)
class FontFile:
    """One face: a file and its index in a collection."""

    path: str
    index: int = 0

    @property
    def name(self) -> str:
        return Path(self.path).name + (f"#{self.index}" if self.index else "")


@dataclass(frozen=True)
class Run:
    """Consecutive characters drawn with one font (``font`` None: Pillow's built-in font)."""

    text: str
    font: FontFile | None

    @property
    def rtl(self) -> bool:
        return any(unicodedata.bidirectional(c) in RTL_CLASSES for c in self.text)


@functools.cache
def cmap(font: FontFile) -> frozenset[int]:
    """The code points a face has glyphs for."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(font.path, fontNumber=font.index, lazy=True) as tt:
            return frozenset(tt.getBestCmap() or ())
    except Exception:  # a broken or unreadable file holds nothing we can use
        return frozenset()


def _face_index(path: Path, family: str | None) -> int:
    if family is None or path.suffix.lower() not in (".ttc", ".otc"):
        return 0
    from fontTools.ttLib import TTCollection

    try:
        with TTCollection(str(path), lazy=True) as coll:
            for i, face in enumerate(coll.fonts):
                if face["name"].getDebugName(1) == family:
                    return i
    except Exception:
        pass
    return 0


@functools.cache
def installed(dirs: tuple[Path, ...] = FONT_DIRS) -> tuple[FontFile, ...]:
    """The preferred faces found under ``dirs``, then every other regular sans face there."""
    files: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.rglob("*")):
                if p.suffix.lower() in (".ttf", ".otf", ".ttc") and p.name not in files:
                    files[p.name] = p
    out = [
        FontFile(str(files[n]), _face_index(files[n], fam)) for n, fam in PREFERRED if n in files
    ]
    chosen = {f.path for f in out}
    # The rest cover scripts the preferred ones lack (Thai, Devanagari ...): regular sans first.
    rest = sorted(
        (p for p in files.values() if str(p) not in chosen),
        key=lambda p: ("Sans" not in p.name, "Regular" not in p.name, p.name),
    )
    return tuple(out + [FontFile(str(p)) for p in rest])


def escape(ch: str) -> str:
    """A visible stand-in for a character no font holds."""
    return f"<U+{ord(ch):04X}>"


def _neutral(ch: str) -> bool:
    # Spaces, punctuation and digits stay in the font of the run around them when it has them.
    return unicodedata.category(ch)[0] in "ZPN" or ch in "×·"


def runs(text: str, fonts: tuple[FontFile, ...] | None = None) -> list[Run]:
    """``text`` (logical order) as runs, each with a font that holds all its characters."""
    fonts = installed() if fonts is None else fonts
    out: list[Run] = []
    current: FontFile | None = None
    buf = ""

    def font_for(ch: str) -> FontFile | Literal[False]:
        if current is not None and _neutral(ch) and ord(ch) in cmap(current):
            return current
        for f in fonts:
            if ord(ch) in cmap(f):
                return f
        return False  # no font holds it

    for ch in text:
        kind = unicodedata.category(ch)
        if kind == "Cc":
            ch = " "  # newlines, tabs, control characters: a space
        font = font_for(ch) if fonts else (None if 0x20 <= ord(ch) < 0x7F else False)
        if font is False:
            if kind == "Cf":
                continue  # an invisible format character (a joiner) no font holds: nothing
            font, ch = (fonts[0] if fonts else None), escape(ch)
        if font != current and buf:
            out.append(Run(buf, current))
            buf = ""
        current = font
        buf += ch
    if buf:
        out.append(Run(buf, current))
    return out


def missing(text: str, fonts: tuple[FontFile, ...] | None = None) -> list[str]:
    """The characters of ``text`` that no installed font holds (they would be escaped)."""
    fonts = installed() if fonts is None else fonts
    return [c for c in dict.fromkeys(text) if not any(ord(c) in cmap(f) for f in fonts)]
