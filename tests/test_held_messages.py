"""A message held by a worker process that died goes back to its queue soon, not at the
visibility timeout; a live holder's messages are never touched. Against a real Valkey, with
messages delivered by kombu itself (its ``unacked`` hash as a worker leaves it)."""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from farm import fleet, keys
from farm.domain.jobs import JobSpec, JobState
from farm.stores.records import RecordStore, start_fence
from farm.stores.unacked import UNACKED, UNACKED_INDEX, HeldMessages, queue_list
from tests.databases import own_database
from tests.waiting import wait_until
from workers.holding import Holding

QUEUE = "decoder.kandinsky-2.2"


@pytest.fixture
def own_db(settings):
    with own_database(settings, 11) as pair:
        yield pair


@pytest.fixture
def app(own_db):
    from workers.app import create_app

    app = create_app(own_db[0])
    yield app
    app.close()


def _send(app, job_id: str, priority: int = fleet.NORMAL) -> str:
    message_id = secrets.token_hex(8)
    payload = {"campaign_id": job_id.rsplit("-", 1)[0], "jobs": [{"job_id": job_id}]}
    app.send_task(keys.DECODER_TASK, kwargs=payload, task_id=message_id, priority=priority)
    return message_id


def _deliver(app) -> tuple[str, str]:
    """Take one message from the queue as a worker does (late ack): (delivery tag, task id)."""
    conn = app.connection_for_read()
    channel = conn.default_channel
    message = channel.basic_get(QUEUE, no_ack=False)
    assert message is not None
    # The worker is gone without a word: kombu's restore at close must not run.
    channel.qos.restore_at_shutdown = False
    channel.qos._delivered.clear()
    conn.release()
    return message.delivery_tag, message.headers["id"]


def _queued(client) -> list[dict]:
    out = []
    for name in fleet.priority_lists(QUEUE):
        out += [json.loads(raw) for raw in client.lrange(name, 0, -1)]
    return out


def _farm(own_db):
    from farm.service import Farm

    return Farm(own_db[0], client=redis.Redis.from_url(own_db[0].redis_url))


def test_a_dead_holders_message_goes_back_once_with_several_reconcilers(own_db, app):
    settings, client = own_db
    message_id = _send(app, "c-0", priority=fleet.level("high"))
    tag, got = _deliver(app)
    assert got == message_id and client.hexists(UNACKED, tag) and _queued(client) == []
    Holding(client, "decoder-1@host").received(tag)  # its holder never beats: it died
    farms = [_farm(own_db) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        given = list(pool.map(lambda f: f.give_back(confirm_s=0), farms))
    assert sorted(len(g) for g in given) == [0, 0, 0, 1] and [m for g in given for m in g] == [
        message_id
    ]
    (back,) = _queued(client)
    assert back["headers"]["id"] == message_id and back["headers"]["redelivered"] is True
    # On its queue at its priority step, as kombu's own restore would put it.
    high = fleet.priority_lists(QUEUE)[fleet.level("high")]
    assert client.llen(high) == 1 == client.llen(queue_list(QUEUE, back))
    assert not client.hexists(UNACKED, tag) and client.zscore(UNACKED_INDEX, tag) is None
    assert not client.hexists(keys.HOLDERS, tag)
    # Delivered again, it is the same message: its start fence lets it take over its jobs.
    assert _deliver(app) == (tag, message_id)


def test_a_live_holders_messages_are_never_given_back(own_db, app):
    settings, client = own_db
    _send(app, "c-0")
    tag, _ = _deliver(app)
    holder = Holding(client, "decoder-1@host")
    holder.start()  # beats: alive
    try:
        holder.received(tag)
        for _ in range(3):
            assert _farm(own_db).give_back(confirm_s=0) == []
        assert client.hexists(UNACKED, tag) and client.hexists(keys.HOLDERS, tag)
    finally:
        holder.stop()


def test_a_silent_holder_is_dead_only_after_the_confirmation_window(own_db, app):
    """Its key gone may be a Redis outage longer than its TTL: it must stay silent once the
    reconcilers can see it, for the window, before its messages move."""
    settings, client = own_db
    _send(app, "c-0")
    tag, _ = _deliver(app)
    holder = Holding(client, "decoder-1@host")
    holder.received(tag)
    farm = _farm(own_db)
    assert farm.give_back(confirm_s=0.5) == []  # first seen silent now
    client.set(keys.holder(holder.id), "1", ex=10)  # it speaks again (Redis was back)
    assert farm.give_back(confirm_s=0.5) == []
    client.delete(keys.holder(holder.id))
    assert farm.give_back(confirm_s=0.5) == []  # silent again: the window starts over
    silent_at = time.monotonic()
    back = wait_until(lambda: farm.give_back(confirm_s=0.5), timeout=10, every=0.05)
    assert len(back) == 1 and time.monotonic() - silent_at >= 0.45


def test_unknown_stale_or_running_holders_keep_todays_behaviour(own_db, app):
    settings, client = own_db
    farm = _farm(own_db)
    # No holder entry (received before this change, or lost with Redis): left to kombu.
    _send(app, "c-0")
    unknown, _ = _deliver(app)
    # An entry of an earlier delivery of the same message (a stale holder's): not this one's.
    _send(app, "c-1")
    stale, _ = _deliver(app)
    client.hset(keys.HOLDERS, stale, f"decoder-9@host/old|{time.time() - 600:.3f}")
    # A pool process of the dead holder still runs the message: its execution says so.
    running_id = _send(app, "c-2")
    running, _ = _deliver(app)
    Holding(client, "decoder-1@host").received(running)
    client.set(keys.running_message(running_id), "1", ex=10)
    assert farm.give_back(confirm_s=0) == []
    assert {t.decode() for t in client.hkeys(UNACKED)} == {unknown, stale, running}
    client.delete(keys.running_message(running_id))
    assert farm.give_back(confirm_s=0) == [running_id]


def test_entries_of_messages_no_longer_held_are_dropped(own_db, app):
    settings, client = own_db
    _send(app, "c-0")
    tag, _ = _deliver(app)
    holder = Holding(client, "decoder-1@host")
    holder.received(tag)
    holder.received("acked-long-ago")
    HeldMessages(client, [QUEUE]).scan()
    assert [t.decode() for t in client.hkeys(keys.HOLDERS)] == [tag]


def test_reconcile_gives_back_a_dead_workers_message_instead_of_sending_its_jobs(own_db, app):
    """Its first render's job started and died; its second render's job never started: the
    message goes back whole (both jobs queued under it), nothing is sent again beside it."""
    settings, client = own_db
    records = RecordStore(client, 600)
    cid = secrets.token_hex(16)
    ids = [f"{cid}-0", f"{cid}-1"]
    records.create_campaign(cid, "alice", total=2, families=["kandinsky-2.2"])
    records.add_fed(cid, "alice", "renders", [(j, JobSpec(prompt="held")) for j in ids])
    fence = start_fence("p1", "x0")
    records.moves(cid, [(j, {}) for j in ids], JobState.PRIOR, (JobState.QUEUED,), fence=fence)
    message_id = secrets.token_hex(8)
    payload = {"campaign_id": cid, "jobs": [{"job_id": j} for j in ids]}
    app.send_task(keys.DECODER_TASK, kwargs=payload, task_id=message_id)
    tag, _ = _deliver(app)
    holder = Holding(client, "decoder-1@host")
    holder.received(tag)
    allowed = (JobState.PRIOR, JobState.DECODING)
    records.moves(
        cid, [(ids[0], {})], JobState.DECODING, allowed, fence=start_fence(message_id, "x1")
    )
    for job_id in ids:
        client.hset(keys.job(job_id), "updated_at", time.time() - 3600)
    client.hset(keys.HOLDERS_SILENT, holder.id, time.time() - 60)  # silent for a minute
    farm = _farm(own_db)
    assert farm.reconcile(grace_s=1, campaign_id=cid, recheck_s=0) == []
    (back,) = _queued(client)
    assert back["headers"]["id"] == message_id
    assert records.states(ids) == [JobState.DECODING, JobState.PRIOR]  # its own to take over
    assert farm.reconcile(grace_s=1, campaign_id=cid, recheck_s=0) == []  # covered by it


def test_a_holder_writes_again_only_what_is_still_its_own(own_db):
    """A beat writes its entries again (Redis may have lost one) but never over another
    holder's: a message given back while it was silent is the new holder's."""
    settings, client = own_db
    a, b = Holding(client, "decoder-1@host"), Holding(client, "decoder-2@host")
    a.received("t-lost")
    a.received("t-moved")
    client.hdel(keys.HOLDERS, "t-lost")
    b.received("t-moved")
    a._beat()
    assert client.hget(keys.HOLDERS, "t-lost").decode().startswith(a.id + "|")
    assert client.hget(keys.HOLDERS, "t-moved").decode().startswith(b.id + "|")
    assert client.exists(keys.holder(a.id))
