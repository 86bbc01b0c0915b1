"""`farm resume` says how many jobs will run again, the unfed ones a cancel stopped included
(a real Valkey, an isolated database with no worker: what is queued stays to be counted)."""

from __future__ import annotations

import os
import re

import httpx

from farm import cli, keys
from farm.client import Client
from farm.domain.jobs import JobState
from farm.service import Farm
from tests.test_feeding import TINY, _farm, _queued_job_ids


def _will_run(farm: Farm, cid: str) -> set[str]:
    """Feed all that is left, then the jobs a message carries whose record says they run."""
    unbounded = Farm(farm.settings.model_copy(update={"feed_depth": 100_000}))
    while unbounded.feed_once():
        pass
    ids = sorted(set(_queued_job_ids(farm, "prior.kandinsky-2.2")))
    recs = farm.records.get_many(ids)
    return {r.job_id for r in recs if r is not None and r.state == JobState.QUEUED}


def test_resume_counts_the_unfed_jobs_that_a_cancel_stopped(settings, monkeypatch, capsys):
    """300 jobs, 160 fed (10 of them done), the rest in S3: cancel, then `farm resume` prints
    the 290 that then run, not only the 150 fed ones."""
    farm = _farm(settings, feed_depth=160)
    cid = farm.submit_campaign(
        {"grid": {"prompts": ["r"], "seeds": 300}, "defaults": TINY}
    ).campaign_id
    assert int(farm.redis.hget(keys.campaign(cid), "fed")) == 160
    done = [f"{cid}-{i}" for i in range(10)]
    farm.records.move_many(cid, done, JobState.DONE, (JobState.QUEUED,))
    farm.cancel(cid)
    assert farm.records.campaign(cid)["counts"]["cancelled"] == 290

    def api(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/campaigns/{cid}/resume"
        return httpx.Response(200, json=farm.resume(cid))

    for k in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("FARM_STATE_DIR", str(settings.state_dir / "no-stack"))
    client = Client("http://farm.test", "t", transport=httpx.MockTransport(api))
    monkeypatch.setattr(cli.campaigns, "_client", lambda settings: client)
    assert cli.main(["resume", cid]) == 0
    printed = int(re.search(r"requeued (\d+) jobs", capsys.readouterr().out).group(1))
    will_run = _will_run(farm, cid)
    assert printed == len(will_run) == 290, (printed, len(will_run))
    assert will_run == {f"{cid}-{i}" for i in range(10, 300)}
    assert farm.records.campaign(cid)["counts"]["queued"] == 290
    # A second resume finds nothing more to run.
    assert farm.resume(cid)["requeued"] == 0
    farm.redis.flushdb()
