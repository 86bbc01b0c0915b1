"""The chaos suite's judge: every job of a campaign's manifest is ok, lost, duplicated, failed,
and every object under the campaign's prefix is expected or not.

It reads only what users can read (the job list through the API, the objects in S3) and the
workers' logs (each render logs ``rendered <job ids>``), so it checks the farm from outside.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CATEGORIES = ("ok", "lost", "duplicated", "unexpected", "failed")
_RENDER = re.compile(r"(rendering|rendered) ((?:[0-9a-f]{32}-\d+ ?)+)")


def executions(logs: list[Path]) -> tuple[Counter, Counter]:
    """Renders started and renders completed per job id, from the decoder workers' logs (a
    render killed midway only started)."""
    started: Counter = Counter()
    completed: Counter = Counter()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            m = _RENDER.search(line)
            if m:
                (started if m.group(1) == "rendering" else completed).update(m.group(2).split())
    return started, completed


@dataclass
class Report:
    counts: Counter
    started: Counter  # renders started -> number of jobs
    completed: Counter  # renders completed -> number of jobs
    problems: list[str] = field(default_factory=list)

    def lines(self) -> str:
        counts = " ".join(f"{c}={self.counts[c]}" for c in CATEGORIES)
        text = f"{counts}\nexecutions per job: started {_spread(self.started)}; "
        text += f"completed {_spread(self.completed)}"
        return text + "".join(f"\n  {p}" for p in self.problems[:20])


def _spread(counter: Counter) -> str:
    return ", ".join(f"{n}x: {jobs} jobs" for n, jobs in sorted(counter.items()))


def check(
    job_ids: list[str],
    jobs: list[dict],
    object_keys: set[str],
    results_lines: list[str],
    campaign_prefix: str,
    renders: tuple[Counter, Counter],
) -> Report:
    """Classify each job of the manifest and each object under the campaign's prefix.

    Args:
        job_ids: every job id the campaign's manifest names.
        jobs: the campaign's job list as the API gives it (``jobs.jsonl``).
        object_keys: every key under ``campaign_prefix`` in S3.
        results_lines: the campaign's results file (JSON lines), written when it ended.
        renders: renders started and completed per job id (``executions``).
    """
    counts: Counter = Counter()
    problems: list[str] = []
    by_id = {}
    for job in jobs:
        if job["job_id"] in by_id:
            counts["duplicated"] += 1
            problems.append(f"{job['job_id']}: listed twice by the API")
        by_id[job["job_id"]] = job
    in_results = Counter(json.loads(line)["job_id"] for line in results_lines if line.strip())
    expected = {f"{campaign_prefix}/{name}" for name in _campaign_files(object_keys)}
    for job_id in job_ids:
        job = by_id.get(job_id)
        image = f"{campaign_prefix}/{job_id}.png"
        expected |= {image, f"{campaign_prefix}/{job_id}.json"}
        if job is None:
            counts["lost"] += 1
            problems.append(f"{job_id}: unknown to the API")
        elif job["state"] == "failed":
            counts["failed"] += 1
            problems.append(f"{job_id}: failed: {job.get('error')}")
        elif job["state"] != "done" or image not in object_keys:
            counts["lost"] += 1
            problems.append(f"{job_id}: {job['state']}, image stored: {image in object_keys}")
        elif in_results[job_id] != 1:
            counts["duplicated" if in_results[job_id] > 1 else "lost"] += 1
            problems.append(f"{job_id}: {in_results[job_id]} lines in the results file")
        else:
            counts["ok"] += 1
    for key in sorted(object_keys - expected):
        counts["unexpected"] += 1
        problems.append(f"unexpected object {key}")
    started, completed = (Counter(r.get(j, 0) for j in job_ids) for r in renders)
    return Report(counts, started, completed, problems)


def _campaign_files(keys: set[str]) -> set[str]:
    """The campaign's own files (manifest chunks, results, contact sheet): expected."""
    names = {k.rsplit("/", 1)[-1] for k in keys}
    own = {"manifest.json", "results.jsonl", "contact_sheet.png"}
    return {n for n in names if n in own or re.fullmatch(r"manifest-\d{5}\.jsonl", n)}
