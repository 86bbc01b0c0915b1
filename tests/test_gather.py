"""Batches across messages: offers and claims against a real Valkey (no workers)."""

from __future__ import annotations

from farm import keys
from farm.domain.batching import batch_key
from farm.domain.jobs import JobSpec
from farm.stores.gather import Gathering, offer_for, open_list

QUEUE = "decoder.kandinsky-2.2"
SPEC = JobSpec.model_validate({"prompt": "a cat", "seed": 1, "height": 64, "width": 64})
KEY = batch_key(SPEC)


def _payload(campaign: str, n: int) -> dict:
    return {"campaign_id": campaign, "jobs": [{"job_id": f"{campaign}-{i}"} for i in range(n)]}


def _offer(g: Gathering, message_id: str, campaign: str, n: int) -> None:
    g.offer([offer_for(QUEUE, SPEC, message_id, _payload(campaign, n), batch_max=8)])


def _ids(payloads) -> list[str]:
    return [job["job_id"] for p in payloads for job in p["jobs"]]


def test_a_decoder_claims_other_messages_oldest_first_up_to_its_room(redis_client):
    g = Gathering(redis_client, ttl_s=60)
    for n, campaign in enumerate("abcd"):
        _offer(g, f"m-{campaign}", campaign, 1 + (n == 2))  # c has two jobs
    _offer(g, "m-own", "own", 1)
    taken = g.gather(QUEUE, KEY, "m-own", room=3)
    assert _ids(taken) == ["a-0", "b-0"]  # c (two jobs) does not fit the one place left
    assert _ids(g.gather(QUEUE, KEY, "m-own", room=3)) == ["a-0", "b-0"]  # no room: nothing new
    # The claimed messages, delivered later, are acknowledged without running.
    assert g.gather(QUEUE, KEY, "m-a", room=7) is None
    assert g.gather(QUEUE, KEY, "m-b", room=7) is None
    # c and d were not taken: their own deliveries render them (and claim what is left).
    assert _ids(g.gather(QUEUE, KEY, "m-c", room=6)) == ["d-0"]
    assert redis_client.llen(open_list(QUEUE, KEY)) == 0  # nothing left on offer


def test_a_redelivered_claimer_gets_back_what_it_took(redis_client):
    """The claimer died mid-render: its message comes again and finds its claims."""
    g = Gathering(redis_client, ttl_s=60)
    _offer(g, "m-own", "own", 1)
    _offer(g, "m-x", "x", 1)
    first = g.gather(QUEUE, KEY, "m-own", room=7)
    _offer(g, "m-y", "y", 1)  # arrived while it rendered
    again = g.gather(QUEUE, KEY, "m-own", room=7)
    assert _ids(first) == ["x-0"] and _ids(again) == ["x-0", "y-0"]
    g.release("m-own")
    assert not redis_client.exists(keys.claims("m-own"))


def test_a_message_whose_delivery_started_can_no_longer_be_claimed(redis_client):
    g = Gathering(redis_client, ttl_s=60)
    _offer(g, "m-1", "one", 1)
    _offer(g, "m-2", "two", 1)
    assert g.gather(QUEUE, KEY, "m-1", room=7) == [
        {"campaign_id": "two", "jobs": [{"job_id": "two-0"}]}
    ]
    # m-2 was claimed by m-1; m-1 itself started: neither can be claimed by a third.
    _offer(g, "m-3", "three", 1)
    assert g.gather(QUEUE, KEY, "m-3", room=7) == []
    assert g.gather(QUEUE, KEY, "m-2", room=7) is None


def test_only_messages_with_room_whose_jobs_batch_are_offered():
    full = {"campaign_id": "c", "jobs": [{"job_id": str(i)} for i in range(8)]}
    assert offer_for(QUEUE, SPEC, "m", full, batch_max=8) is None
    several = SPEC.model_copy(update={"num_images_per_prompt": 2})
    assert offer_for(QUEUE, several, "m", _payload("c", 1), batch_max=8) is None
    assert offer_for(QUEUE, SPEC, "m", _payload("c", 1), batch_max=8)[2] == "m"
