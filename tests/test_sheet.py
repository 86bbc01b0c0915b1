"""The contact sheet: captions in every script (no tofu), rows by prompt, columns by seed.

The rendered sheets are saved under out/test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from farm import fonts, sheet
from farm.sheet import Tile, contact_sheet, layout

ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"
PROMPTS = [
    "A alien cheeseburger creature eating itself, claymation, cinematic, moody lighting",
    "قطة حمراء تجلس على نافذة، صورة فوتوغرافية",  # Arabic
    "한복을 입은 고양이, 수채화 스타일",  # Korean
    "水墨画风格的山水，云雾缭绕",  # Chinese
]
SEEDS = [42, 1234, 7]
ENGINES = ["basic"] + (["raqm"] if sheet.raqm_available() else [])


def _fonts_or_skip():
    lacking = fonts.missing("".join(PROMPTS))
    if lacking and shutil.which("apt-get") is None:
        pytest.skip(f"no font for {lacking!r} and no apt-get to install fonts-noto (make install)")
    assert not lacking, f"no installed font holds {lacking!r}: run `make install` (fonts-noto)"


def _color(p: int, s: int) -> tuple[int, int, int]:
    return (40 + 50 * p, 200 - 60 * s, 90 + 30 * p)


def _png(color, size=(128, 128)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _record(prompt: str, seed: int, **spec) -> dict:
    base = {"prompt": prompt, "model": "kandinsky-2.2", "task": "text2img", "height": 128}
    base |= {"width": 128, "num_inference_steps": 10, "guidance_scale": 4.0, "seed": seed}
    return {"job_id": f"j{seed}", "spec": base | spec, "seed": seed}


def _tiles() -> list[Tile]:
    tiles = [
        Tile(_png(_color(p, s)), _record(prompt, seed))
        for p, prompt in enumerate(PROMPTS)
        for s, seed in enumerate(SEEDS)
    ]
    random.Random(3).shuffle(tiles)  # the sheet orders them, not the caller
    return tiles


def test_every_caption_character_has_a_real_glyph():
    """Each character is drawn with a font whose cmap holds it, and its glyph is not .notdef."""
    _fonts_or_skip()
    for text in PROMPTS:
        for run in fonts.runs(text):
            assert run.font is not None
            font = sheet.Writer(sheet.PROMPT_PX).font(run.font)
            tofu = font.getmask("\uffff")  # no font maps U+FFFF: its .notdef box
            for ch in set(run.text) - {" "}:
                assert ord(ch) in fonts.cmap(run.font), (ch, run.font.name)
                glyph = font.getmask(ch)
                assert (glyph.size, bytes(glyph)) != (tofu.size, bytes(tofu)), (ch, run.font)


def test_scripts_pick_their_fonts():
    _fonts_or_skip()
    names = {text[:3]: {r.font.name for r in fonts.runs(text)} for text in PROMPTS}
    assert any("Arabic" in n for n in names[PROMPTS[1][:3]])
    assert any("CJK" in n or "hei" in n.lower() for n in names[PROMPTS[3][:3]])


def test_a_character_no_font_holds_is_escaped_not_boxed():
    text = "cat \U0010fffd dog"  # private use: in no font
    runs = fonts.runs(text)
    joined = "".join(r.text for r in runs)
    assert "\U0010fffd" not in joined and "<U+10FFFD>" in joined
    assert fonts.missing(text) == ["\U0010fffd"]


def test_layout_rows_by_prompt_columns_by_seed():
    tiles = _tiles()
    grid = layout(tiles)
    assert grid.column_seeds == [
        f"seed {s}" for s in dict.fromkeys(t.record["seed"] for t in tiles)
    ]
    assert len(grid.cells) == len(PROMPTS) and grid.cols == len(SEEDS)
    for row in grid.cells:
        assert len({tiles[i].record["spec"]["prompt"] for i in row}) == 1
    for c, label in enumerate(grid.column_seeds):
        assert {f"seed {tiles[row[c]].record['seed']}" for row in grid.cells} == {label}


@pytest.mark.parametrize("engine", ENGINES)
def test_sheet_renders_every_tile_in_its_cell_with_captions(engine):
    _fonts_or_skip()
    tiles = _tiles()
    png = contact_sheet(tiles, title="demo 0123abcd · 12 images", raqm=engine == "raqm")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"contact_sheet_{engine}.png").write_bytes(png)
    grid = layout(tiles)
    geo = sheet.Geometry(sheet.SHEET_THUMB, len(grid.cells), grid.cols, True, True)
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGB")
        assert im.size == geo.size
        for r, row in enumerate(grid.cells):
            for c, i in enumerate(row):
                x0, y0, x1, y1 = geo.image(r, c)
                p = PROMPTS.index(tiles[i].record["spec"]["prompt"])
                s = SEEDS.index(tiles[i].record["seed"])
                assert im.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == _color(p, s)
                # The caption under the image has ink; an Arabic one hugs the right edge.
                band = im.crop((x0, y1 + sheet.PAD, x1, y1 + sheet.PAD + 3 * 20)).convert("L")
                ink = band.point(lambda v: 255 if v < 128 else 0).getbbox()
                assert ink is not None, (r, c)
                if p == 1:
                    assert ink[2] > band.width - 6 and ink[0] > 6, ink
                else:
                    assert ink[0] < 6, ink


def test_seeds_not_shared_fill_rows_in_seed_order():
    """Jobs that each drew their own seed: no seed columns, still a row per prompt."""
    tiles = [Tile(_png((10 * i, 0, 0)), _record(PROMPTS[i % 2], 1000 + i)) for i in range(6)]
    grid = layout(tiles)
    assert grid.column_seeds is None and len(grid.cells) == 2
    for row in grid.cells:
        seeds = [tiles[i].record["seed"] for i in row]
        assert seeds == sorted(seeds)
        assert len({tiles[i].record["spec"]["prompt"] for i in row}) == 1


def test_sheet_keeps_a_sane_size():
    tiles = [Tile(_png((0, 0, 0), (64, 64)), _record(f"p{i % 10}", i // 10)) for i in range(100)]
    with Image.open(io.BytesIO(contact_sheet(tiles))) as im:
        drawn = sheet.SHEET_MAX
        assert im.width <= 2 * sheet.MARGIN + sheet.COLS_MAX * (sheet.SHEET_THUMB + 30)
        assert im.width * im.height < 1.3 * drawn * (sheet.SHEET_THUMB + 30) * 420


def test_long_prompts_wrap_and_end_in_an_ellipsis():
    _fonts_or_skip()
    w = sheet.Writer(sheet.PROMPT_PX)
    lines = w.wrap("水墨画风格的山水" * 20, 192, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(w.width(line) <= 192 for line in lines)
    assert w.wrap("a cat", 192, 3) == ["a cat"]
