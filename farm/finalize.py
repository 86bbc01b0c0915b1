"""A finished campaign's results manifest (JSONL) and contact sheet, written beside its images."""

from __future__ import annotations

import io
import json
import math

from farm import keys
from farm.domain.jobs import JobState
from farm.errors import NotFound
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore

SHEET_MAX = 64  # images on a campaign's contact sheet
SHEET_THUMB = 128


def finalize(records: RecordStore, objects: ObjectStore, prefix: str, campaign_id: str) -> dict:
    """Write a finished campaign's results manifest (JSONL) and contact sheet to S3."""
    info = records.campaign(campaign_id)
    if info is None:
        raise NotFound(f"unknown campaign {campaign_id}")
    tenant = info["tenant"]
    recs = [r for r in records.get_many(records.campaign_job_ids(campaign_id)) if r]
    lines = [
        json.dumps(
            {
                "job_id": r.job_id,
                "state": r.state.value,
                "spec": r.spec.to_dict(),
                "seed": r.seed,
                "s3_key": r.s3_key if r.state == JobState.DONE else None,
                "s3_keys": r.s3_keys if r.state == JobState.DONE else [],
                "timings": r.timings,
                "error": r.error,
            },
            ensure_ascii=False,
        )
        for r in recs
    ]
    results_key = keys.results_object(prefix, tenant, campaign_id)
    objects.put(results_key, ("\n".join(lines) + "\n").encode(), "application/x-ndjson")
    done = [k for r in recs if r.state == JobState.DONE for k in r.s3_keys][:SHEET_MAX]
    sheet_key = None
    if done:
        sheet_key = keys.contact_sheet_object(prefix, tenant, campaign_id)
        objects.put(sheet_key, contact_sheet([objects.get(k) for k in done]), "image/png")
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
