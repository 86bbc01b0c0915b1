"""A finished campaign's results (results.jsonl) and contact sheet, written beside its images."""

from __future__ import annotations

import json
import tempfile

from farm import keys
from farm.domain.jobs import JobState
from farm.domain.manifest import JobIds
from farm.errors import NotFound
from farm.sheet import SHEET_MAX, Tile, contact_sheet
from farm.stores.objects import ObjectStore
from farm.stores.records import RecordStore

PAGE = 1000  # records read per round trip


def finalize(records: RecordStore, objects: ObjectStore, prefix: str, campaign_id: str) -> dict:
    """Write a finished campaign's results (JSON lines) and contact sheet to S3, a page of
    records at a time (a million-job campaign is never held whole), and drop its marker."""
    info = records.campaign(campaign_id)
    if info is None:
        raise NotFound(f"unknown campaign {campaign_id}")
    tenant, total = info["tenant"], int(info["total"])
    ids = JobIds(campaign_id, total)
    sheet: list[tuple[str, dict, int]] = []  # (image key, its results line, image number)
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
                    images = r.s3_keys[: SHEET_MAX - len(sheet)]
                    sheet += [(k, line, n) for n, k in enumerate(images)]
        out.flush()
        results_key = keys.results_object(prefix, tenant, campaign_id)
        objects.put_file(results_key, out.name, "application/x-ndjson")
    sheet_key = None
    if sheet:
        sheet_key = keys.contact_sheet_object(prefix, tenant, campaign_id)
        tiles = [Tile(objects.get(k), line, n) for k, line, n in sheet]
        done_n = int(info["counts"]["done"])
        shown = (
            f"{len(tiles)} of {done_n} images" if done_n > len(tiles) else f"{len(tiles)} images"
        )
        title = f"{info.get('name') or 'campaign'} {campaign_id[:8]} · {shown}"
        objects.put(sheet_key, contact_sheet(tiles, title=title), "image/png")
    objects.delete(keys.active_marker(prefix, campaign_id))
    return {"results": results_key, "contact_sheet": sheet_key}
