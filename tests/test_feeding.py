"""The feeder against a real Valkey and S3, with no workers (an isolated Redis database)."""

from __future__ import annotations

import base64
import json
import threading

from farm import fleet, keys
from farm.service import Farm

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def _farm(settings, **update) -> Farm:
    # Database 7: no worker of the session consumes it, so fed messages stay to be counted.
    url = settings.redis_url.rsplit("/", 1)[0] + "/7"
    farm = Farm(settings.model_copy(update={"redis_url": url, **update}))
    farm.redis.flushdb()
    return farm


def _queued_job_ids(farm: Farm, queue: str) -> list[str]:
    ids = []
    for name in fleet.priority_lists(queue):
        for raw in farm.redis.lrange(name, 0, -1):
            body = json.loads(raw)
            kwargs = json.loads(base64.b64decode(body["body"]))[1]
            ids += [j["job_id"] for j in kwargs["jobs"]]
    return ids


def test_two_feeders_at_once_feed_every_job_once(settings):
    # Depth 1 at submission: nothing is fed yet (less than a render's worth of room).
    sub = _farm(settings, feed_depth=1).submit_campaign(
        {"grid": {"prompts": ["twice"], "seeds": 600}, "defaults": TINY}
    )
    first = Farm(
        settings.model_copy(
            update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + "/7", "feed_depth": 10_000}
        )
    )
    second = Farm(first.settings)
    assert first.redis.hget(keys.campaign(sub.campaign_id), "fed") == b"0"
    go = threading.Barrier(2)

    def feed(farm):
        go.wait()
        while farm.feed_once():
            pass

    threads = [threading.Thread(target=feed, args=(f,)) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = _queued_job_ids(first, "prior.kandinsky-2.2")
    assert sorted(ids) == sorted(f"{sub.campaign_id}-{i}" for i in range(600))
    info = first.records.campaign(sub.campaign_id)
    assert int(info["fed"]) == 600 and info["counts"]["queued"] == 600
    first.redis.flushdb()


def test_the_feeder_keeps_a_family_at_its_depth_and_feeds_a_high_campaign_first(settings):
    farm = _farm(settings, feed_depth=40)
    normal = farm.submit_campaign({"grid": {"prompts": ["n"], "seeds": 500}, "defaults": TINY})
    assert int(farm.redis.hget(keys.campaign(normal.campaign_id), "fed")) == 40
    high = farm.submit_campaign(
        {"grid": {"prompts": ["h"], "seeds": 5}, "defaults": TINY, "priority": "high"}
    )
    assert farm.redis.hget(keys.campaign(high.campaign_id), "fed") == b"0"  # family full
    # Ten normal jobs finish: the room goes to the high campaign, not the normal one.
    ids = [f"{normal.campaign_id}-{i}" for i in range(10)]
    from farm.domain.jobs import JobState

    farm.records.move_many(normal.campaign_id, ids, JobState.DONE, (JobState.QUEUED,))
    farm.feed_once()
    assert farm.redis.hget(keys.campaign(high.campaign_id), "fed") == b"5"
    assert int(farm.redis.hget(keys.campaign(normal.campaign_id), "fed")) == 40
    farm.redis.flushdb()


def test_a_range_claimed_by_a_feeder_that_died_is_sent_again(settings):
    farm = _farm(settings, feed_depth=10_000)
    sub = farm.submit_campaign({"grid": {"prompts": ["lost"], "seeds": 50}, "defaults": TINY})
    # A feeder claimed 50..59 and died before sending them (the claim is all that happened).
    farm.redis.hset(keys.campaign(sub.campaign_id), "fed", 50)
    cid = sub.campaign_id
    farm.redis.delete(keys.feeding(cid))
    farm.redis.hset(keys.feeding(cid), 40, "50:0")
    for i in range(40, 50):
        farm.redis.delete(keys.job(f"{cid}-{i}"))
    for name in fleet.priority_lists("prior.kandinsky-2.2"):
        farm.redis.delete(name)
    assert farm.refeed_stale() == 10
    ids = _queued_job_ids(farm, "prior.kandinsky-2.2")
    assert sorted(ids) == sorted(f"{cid}-{i}" for i in range(40, 50))
    farm.redis.flushdb()


def _seeded(settings, n: int):
    farm = _farm(settings, feed_depth=10_000)
    sub = farm.submit_campaign({"grid": {"prompts": ["r"], "seeds": n}, "defaults": TINY})
    return farm, sub.campaign_id


def test_resume_of_a_healthy_campaign_sends_nothing_and_fails_nothing(settings):
    """Three resumes at once of 20 healthy queued jobs: none sent twice, none marked failed."""
    farm, cid = _seeded(settings, 20)
    outs = []
    threads = [
        threading.Thread(target=lambda: outs.append(Farm(farm.settings).resume(cid)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [o["requeued"] for o in outs] == [0, 0, 0]
    ids = _queued_job_ids(farm, "prior.kandinsky-2.2")
    assert sorted(ids) == sorted(f"{cid}-{i}" for i in range(20))  # each once
    assert farm.records.campaign(cid)["counts"]["queued"] == 20
    farm.redis.flushdb()


def test_jobs_no_message_carries_are_sent_again_once(settings):
    """Their messages are lost (a Redis restart a second behind): the reconciler finds them."""
    farm, cid = _seeded(settings, 12)
    for name in fleet.priority_lists("prior.kandinsky-2.2"):
        farm.redis.delete(name)
    assert farm.reconcile(grace_s=60, recheck_s=0.1) == []  # not idle long enough yet
    sent = farm.reconcile(grace_s=0, recheck_s=0.1)
    assert sorted(sent) == sorted(f"{cid}-{i}" for i in range(12))
    assert farm.reconcile(grace_s=0, recheck_s=0.1) == []  # covered again: nothing twice
    ids = _queued_job_ids(farm, "prior.kandinsky-2.2")
    assert sorted(ids) == sorted(sent)
    farm.redis.flushdb()


def _at_once(calls) -> list:
    outs: list = []
    threads = [threading.Thread(target=lambda c=c: outs.append(c())) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outs


def test_reconcilers_and_resumes_at_once_send_each_stranded_job_once(settings):
    """Three reconcilers (feeders) and two resumes (clients) find the same stranded jobs at the
    same time: each job is sent again by exactly one of them."""
    farm, cid = _seeded(settings, 12)
    for name in fleet.priority_lists("prior.kandinsky-2.2"):
        farm.redis.delete(name)
    calls = [lambda: Farm(farm.settings).reconcile(grace_s=0, recheck_s=0.2) for _ in range(3)]
    calls += [lambda: Farm(farm.settings).resume(cid)["requeued"] for _ in range(2)]
    outs = _at_once(calls)
    sent = [j for out in outs[:5] if isinstance(out, list) for j in out]
    requeued = sum(out for out in outs if isinstance(out, int))
    ids = _queued_job_ids(farm, "prior.kandinsky-2.2")
    assert sorted(ids) == sorted(f"{cid}-{i}" for i in range(12)), "a job was sent twice"
    assert len(sent) + requeued == 12
    farm.redis.flushdb()


def test_cancels_and_resumes_from_several_clients_keep_counts_whole(settings):
    """Cancel three times at once, then resume three times at once: every job is cancelled
    once, then queued once; the counts always add up to the total."""
    farm, cid = _seeded(settings, 20)
    _at_once([lambda: Farm(farm.settings).cancel(cid) for _ in range(3)])
    counts = farm.records.campaign(cid)["counts"]
    assert counts["cancelled"] == 20 and sum(counts.values()) == 20, counts
    outs = _at_once([lambda: Farm(farm.settings).resume(cid) for _ in range(3)])
    assert sum(o["requeued"] for o in outs) == 20, outs
    counts = farm.records.campaign(cid)["counts"]
    assert counts["queued"] == 20 and sum(counts.values()) == 20, counts
    ids = _queued_job_ids(farm, "prior.kandinsky-2.2")
    assert sorted(set(ids)) == sorted(f"{cid}-{i}" for i in range(20))
    # The first copies stay queued (skipped while cancelled; the fence lets only one copy of
    # a job run): each resumed job was sent once more, not three times.
    assert len(ids) == 40
    farm.redis.flushdb()
