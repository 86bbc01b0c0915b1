"""A finished campaign's results manifest (JSONL) and contact sheet, written beside its images."""

from __future__ import annotations

import io
import json
import math
import tempfile

from farm import keys
from farm.domain.jobs import JobState
from farm.domain.manifest import JobIds
from farm.errors import NotFound
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore

SHEET_MAX = 64  # images on a campaign's contact sheet
SHEET_THUMB = 128
PAGE = 1000  # records read per round trip


def finalize(records: RecordStore, objects: ObjectStore, prefix: str, campaign_id: str) -> dict:
    """Write a finished campaign's results (JSON lines) and contact sheet to S3, a page of
    records at a time (a million-job campaign is never held whole), and drop its marker."""
    info = records.campaign(campaign_id)
    if info is None:
        raise NotFound(f"unknown campaign {campaign_id}")
    tenant, total = info["tenant"], int(info["total"])
    ids = JobIds(campaign_id, total)
    sheet: list[str] = []
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".jsonl") as out:
        for start in range(0, total, PAGE):
            for r in records.get_many(ids[start : start + PAGE]):
                if r is None:
                    continue
                done = r.state == JobState.DONE
                line = {
                    "job_id": r.job_id,
                    "state": r.state.value,
                    "spec": r.spec.to_dict(),
                    "seed": r.seed,
                    "s3_key": r.s3_key if done else None,
                    "s3_keys": r.s3_keys if done else [],
                    "timings": r.timings,
                    "error": r.error,
                }
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                if done and len(sheet) < SHEET_MAX:
                    sheet += r.s3_keys[: SHEET_MAX - len(sheet)]
        out.flush()
        results_key = keys.results_object(prefix, tenant, campaign_id)
        objects.put_file(results_key, out.name, "application/x-ndjson")
    sheet_key = None
    if sheet:
        sheet_key = keys.contact_sheet_object(prefix, tenant, campaign_id)
        objects.put(sheet_key, contact_sheet([objects.get(k) for k in sheet]), "image/png")
    objects.delete(keys.active_marker(prefix, campaign_id))
    return {"results": results_key, "contact_sheet": sheet_key}


def contact_sheet(pngs: list[bytes], thumb: int = SHEET_THUMB) -> bytes:
    """A near-square grid of thumbnails (diffusers' make_image_grid), blank cells at the end."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    images = []
    for data in pngs:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im.thumbnail((thumb, thumb))
        cell = Image.new("RGB", (thumb, thumb))
        cell.paste(im, ((thumb - im.width) // 2, (thumb - im.height) // 2))
        images.append(cell)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    images += [Image.new("RGB", (thumb, thumb))] * (rows * cols - len(images))
    buf = io.BytesIO()
    make_image_grid(images, rows=rows, cols=cols).save(buf, format="PNG")
    return buf.getvalue()
