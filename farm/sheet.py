"""A campaign's contact sheet: one row per prompt (and setting), one column per seed, each tile
captioned with its prompt, seed and key parameters, in whatever script the prompt is written.

Text is drawn run by run (``farm.fonts``: each run in a font that holds its characters). Arabic
and Hebrew are shaped and laid right to left by Pillow's raqm layout when it is available
(libraqm, fribidi); without it, by arabic-reshaper + python-bidi, drawn with the basic layout.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache

from farm import fonts

SHEET_MAX = 64  # tiles on a campaign's contact sheet
SHEET_THUMB = 192  # the image area of a tile, pixels
COLS_MAX = 8
PROMPT_LINES = 3

MARGIN, GAP, PAD = 16, 10, 6
PROMPT_PX, META_PX, TITLE_PX = 13, 12, 16
BG, CARD, BORDER, WELL = (244, 244, 241), (255, 255, 255), (190, 190, 186), (226, 226, 222)
INK, MUTED = (28, 28, 28), (96, 96, 96)


@dataclass(frozen=True)
class Tile:
    """One picture and the results record of the job that made it (``spec``, ``seed``)."""

    png: bytes
    record: dict
    n: int = 0  # which image of a job that made several


@dataclass(frozen=True)
class Layout:
    """Tiles by row and column (indices into the tiles; None: an empty cell)."""

    cells: list[list[int | None]]
    column_seeds: list[str] | None  # a header per column, when columns are by seed

    @property
    def cols(self) -> int:
        return max((len(r) for r in self.cells), default=0)


def layout(tiles: list[Tile], cols_max: int = COLS_MAX) -> Layout:
    """Rows by prompt (a row per distinct spec but the seed), columns by seed.

    When the seeds differ from row to row (each job drew its own), a shared seed column would
    leave the sheet mostly empty: the row's tiles then fill it in seed order instead.
    """
    rows: dict[str, list[int]] = {}
    for i, t in enumerate(tiles):
        spec = {k: v for k, v in (t.record.get("spec") or {}).items() if k != "seed"}
        rows.setdefault(json.dumps(spec, sort_keys=True, default=str), []).append(i)
    col_keys = list(dict.fromkeys(_col_key(t) for t in tiles))
    # Seed columns when the grid is at least two thirds full.
    if len(col_keys) <= cols_max and 2 * len(rows) * len(col_keys) <= 3 * len(tiles):
        index = {k: c for c, k in enumerate(col_keys)}
        cells = []
        for members in rows.values():
            row: list[int | None] = [None] * len(col_keys)
            for i in members:
                if row[index[_col_key(tiles[i])]] is None:
                    row[index[_col_key(tiles[i])]] = i
            cells.append(row)
        return Layout(cells, [_seed_label(k) for k in col_keys])
    cells = []
    for members in rows.values():
        members = sorted(members, key=lambda i: _col_key(tiles[i]))
        cells += [list(members[s : s + cols_max]) for s in range(0, len(members), cols_max)]
    return Layout(cells, None)


def _col_key(t: Tile) -> tuple:
    return (t.record.get("seed") if t.record.get("seed") is not None else -1, t.n)


def _seed_label(key: tuple) -> str:
    seed, n = key
    return f"seed {seed}" + (f" #{n + 1}" if n else "")


def caption(record: dict, n: int = 0) -> tuple[str, list[str]]:
    """The prompt and the lines of key parameters under a tile."""
    spec = record.get("spec") or {}
    seed = record.get("seed", spec.get("seed"))
    first = f"seed {seed}" + (f" #{n + 1}" if n else "")
    if spec.get("width") and spec.get("height"):
        first += f" · {spec['width']}×{spec['height']}"
    second = []
    if spec.get("num_inference_steps"):
        second.append(f"{spec['num_inference_steps']} steps")
    if spec.get("guidance_scale") is not None:
        second.append(f"cfg {spec['guidance_scale']:g}")
    if spec.get("task") not in (None, "text2img"):
        second.append(spec["task"])
    model = spec.get("model") or ""
    return spec.get("prompt") or "", [first, " · ".join(second), model]


# -- text ----------------------------------------------------------------------------------------


def raqm_available() -> bool:
    from PIL import features

    return bool(features.check("raqm"))


class Writer:
    """Measures, wraps and draws text in any script at one pixel size."""

    def __init__(self, px: int, *, raqm: bool | None = None):
        self.px = px
        self.raqm = raqm_available() if raqm is None else raqm
        self.line_h = round(px * 1.5)  # Arabic and CJK stand taller than Latin

    def font(self, face: fonts.FontFile | None):
        return _pil_font(face, self.px, self.raqm)

    def _visual(self, line: str) -> list[tuple[fonts.Run, str | None]]:
        """The line's runs left to right, with the direction to draw each in."""
        if not self.raqm:
            # Pure Python: joined letter forms, then the visual order, drawn left to right.
            import arabic_reshaper
            from bidi.algorithm import get_display

            return [(r, None) for r in fonts.runs(get_display(arabic_reshaper.reshape(line)))]
        runs = fonts.runs(line)
        if is_rtl(line):
            runs.reverse()
        return [(r, "rtl" if r.rtl else "ltr") for r in runs]

    def width(self, text: str) -> float:
        return sum(self.font(r.font).getlength(r.text, **_dir(d)) for r, d in self._visual(text))

    def wrap(self, text: str, width: int, max_lines: int) -> list[str]:
        """Lines (logical order) that fit ``width``; the last ends in … when text is left."""
        lines: list[str] = []
        line = ""
        for token in _tokens(" ".join(text.split())):
            if self.width(line + token) <= width or not line.strip():
                line += token
                while self.width(line.rstrip()) > width and len(line) > 1:  # one long word
                    cut = _fit(self, line, width)
                    lines.append(line[:cut])
                    line = line[cut:]
                continue
            lines.append(line.rstrip())
            line = token
        if line.strip():
            lines.append(line.rstrip())
        if len(lines) > max_lines:
            last = lines[max_lines - 1]
            while last and self.width(last + "…") > width:
                last = last[:-1]
            lines = lines[: max_lines - 1] + [last.rstrip() + "…"]
        return lines

    def draw(self, draw, xy: tuple[int, int], text: str, width: int, fill, align: str = "auto"):
        """One line with its top-left box at ``xy``; right-aligned when it reads right to left."""
        x: float  # moved by a measured (fractional) width when right-aligned
        x, y = xy
        if align == "right" or (align == "auto" and is_rtl(text)):
            x += max(0, width - self.width(text))
        baseline = y + round(self.px * 1.1)
        for run, direction in self._visual(text):
            font = self.font(run.font)
            kw = _dir(direction)
            draw.text((x, baseline), run.text, font=font, fill=fill, anchor="ls", **kw)
            x += font.getlength(run.text, **kw)


def _dir(direction: str | None) -> dict:
    return {"direction": direction} if direction else {}


@cache
def _pil_font(face: fonts.FontFile | None, px: int, raqm: bool):
    from PIL import ImageFont

    if face is None:
        return ImageFont.load_default(px)
    engine = ImageFont.Layout.RAQM if raqm else ImageFont.Layout.BASIC
    return ImageFont.truetype(face.path, px, index=face.index, layout_engine=engine)


def is_rtl(text: str) -> bool:
    """Whether the first strong character reads right to left (the paragraph's direction)."""
    for ch in text:
        kind = unicodedata.bidirectional(ch)
        if kind in ("R", "AL"):
            return True
        if kind == "L":
            return False
    return False


# Han, kana and full-width forms break anywhere; other scripts at spaces.
_TOKEN = re.compile(
    r"[\u2e80-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]|[^\s\u2e80-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]+\s*|\s+"
)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _fit(writer: Writer, text: str, width: int) -> int:
    """How many leading characters of ``text`` fit ``width`` (at least one)."""
    n = len(text)
    while n > 1 and writer.width(text[:n]) > width:
        n -= 1
    return n


# -- the sheet -----------------------------------------------------------------------------------


def contact_sheet(
    tiles: list[Tile], *, title: str | None = None, thumb: int = SHEET_THUMB, raqm=None
) -> bytes:
    """A PNG: the tiles in rows by prompt and columns by seed, each with its caption."""
    from PIL import Image, ImageDraw

    tiles = tiles[:SHEET_MAX]
    grid = layout(tiles)
    geo = Geometry(thumb, len(grid.cells), grid.cols, bool(title), grid.column_seeds is not None)
    sheet = Image.new("RGB", geo.size, BG)
    draw = ImageDraw.Draw(sheet)
    prompt_w, meta_w = Writer(PROMPT_PX, raqm=raqm), Writer(META_PX, raqm=raqm)
    title_w = Writer(TITLE_PX, raqm=raqm)
    if title:
        # The layout's explanation when it fits on the line; the column headers say it anyway.
        how = "rows: prompt, columns: seed" if grid.column_seeds else "rows: prompt"
        room = geo.size[0] - 2 * MARGIN
        heading = f"{title} · {how}"
        if title_w.width(heading) > room:
            heading = title_w.wrap(title, room, 1)[0]
        title_w.draw(draw, (MARGIN, MARGIN), heading, room, INK, align="left")
    for c, label in enumerate(grid.column_seeds or []):
        x0, y0, _, _ = geo.card(0, c)
        meta_w.draw(draw, (x0 + PAD, y0 - meta_w.line_h - 2), label, thumb, MUTED, "left")
    for r, row in enumerate(grid.cells):
        for c, i in enumerate(row):
            if i is not None:
                _tile(sheet, draw, geo, r, c, tiles[i], prompt_w, meta_w)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@dataclass(frozen=True)
class Geometry:
    """Where each card, image and caption sits on the sheet."""

    thumb: int
    rows: int
    cols: int
    titled: bool
    headed: bool

    @property
    def caption_h(self) -> int:
        return PAD + PROMPT_LINES * round(PROMPT_PX * 1.5) + 3 * round(META_PX * 1.5) + PAD

    @property
    def card_w(self) -> int:
        return self.thumb + 2 * PAD

    @property
    def card_h(self) -> int:
        return PAD + self.thumb + self.caption_h

    @property
    def top(self) -> int:
        title = round(TITLE_PX * 1.5) + GAP if self.titled else 0
        header = round(META_PX * 1.5) + 2 if self.headed else 0
        return MARGIN + title + header

    @property
    def size(self) -> tuple[int, int]:
        w = 2 * MARGIN + self.cols * self.card_w + max(self.cols - 1, 0) * GAP
        h = self.top + MARGIN + self.rows * self.card_h + max(self.rows - 1, 0) * GAP
        return w, h

    def card(self, row: int, col: int) -> tuple[int, int, int, int]:
        x = MARGIN + col * (self.card_w + GAP)
        y = self.top + row * (self.card_h + GAP)
        return x, y, x + self.card_w, y + self.card_h

    def image(self, row: int, col: int) -> tuple[int, int, int, int]:
        x, y, _, _ = self.card(row, col)
        return x + PAD, y + PAD, x + PAD + self.thumb, y + PAD + self.thumb


def _tile(sheet, draw, geo: Geometry, r: int, c: int, tile: Tile, prompt_w, meta_w) -> None:
    from PIL import Image

    x0, y0, x1, y1 = geo.card(r, c)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=CARD, outline=BORDER)
    ix, iy, _, _ = geo.image(r, c)
    draw.rectangle((ix, iy, ix + geo.thumb - 1, iy + geo.thumb - 1), fill=WELL)
    try:
        with Image.open(io.BytesIO(tile.png)) as src:
            im = src.convert("RGB")
            scale = geo.thumb / max(im.width, im.height)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.LANCZOS)
            sheet.paste(im, (ix + (geo.thumb - im.width) // 2, iy + (geo.thumb - im.height) // 2))
    except Exception:  # an unreadable image leaves its well empty; its caption still says which
        meta_w.draw(draw, (ix + PAD, iy + PAD), "unreadable image", geo.thumb - 2 * PAD, MUTED)
    prompt, meta = caption(tile.record, tile.n)
    y = iy + geo.thumb + PAD
    for line in prompt_w.wrap(prompt, geo.thumb, PROMPT_LINES):
        prompt_w.draw(draw, (ix, y), line, geo.thumb, INK)
        y += prompt_w.line_h
    y = y0 + geo.card_h - PAD - 3 * meta_w.line_h
    for line in meta:
        for part in meta_w.wrap(line, geo.thumb, 1):
            meta_w.draw(draw, (ix, y), part, geo.thumb, MUTED, align="left")
        y += meta_w.line_h
