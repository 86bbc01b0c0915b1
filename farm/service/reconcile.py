"""Reconciling: jobs in flight that no message carries any more are sent again, by themselves.

A job is *in flight* from the moment it is fed until it ends (the set ``farm:inflight`` follows
every state move). It is *covered* while something will still run it: a message waiting in one
of its queues (or its claims: jobs a decoder gathered from other messages), its held chained
message, an execution that says it is alive (``workers.liveness``: it is running now), or a
message a worker holds (kombu's ``unacked`` hash) and has not started. A message whose
execution started and died with its worker covers nothing: kombu would give it out again only
after the visibility timeout (an hour by default), so its jobs are sent again after the grace.
A message held by a worker process that died (its holder silent: ``farm.stores.unacked``) goes
back to its queue first, whole, started or not: its jobs are queued again, not stranded.
A fault can leave a job in flight and uncovered: a worker killed, Redis restarted from an AOF a
second behind, a message lost with a worker's connection, a feeder that died mid-range. Such a
job would wait for a human (or an hour); the reconciler (run by the feeder) sends it again.

It errs on the side of waiting: a job counts as stranded only when it is uncovered in two scans
some seconds apart, with no state move in between and none for ``grace_s`` before. A message
between its queue and the unacked hash (kombu moves it in two steps) is caught by the second
scan. Sending a job again is safe in any case: the state machine refuses a job that ended, and
its image key is its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import redis

from farm import fleet, keys
from farm.domain.jobs import JobState
from farm.service.enqueue import Enqueuer
from farm.stores.connect import text
from farm.stores.records import RecordStore
from farm.stores.transitions import ACTIVE
from farm.stores.unacked import CONFIRM_S, UNACKED, HeldMessages
from farm.stores.unacked import message_jobs as _message_jobs

log = logging.getLogger("farm.reconciler")

RECHECK_S = 2.0


# The state a job is in while a message of this task runs it.
_RUNS_IN = {keys.PRIOR_TASK: JobState.PRIOR.value, keys.DECODER_TASK: JobState.DECODING.value}


class Reconciler:
    """Finds the jobs in flight that nothing will run and has ``enqueuer`` send them again.

    Args:
        families: the enabled families (``settings.enabled_families``): their queues are read.
    """

    def __init__(
        self,
        client: redis.Redis,
        records: RecordStore,
        enqueuer: Enqueuer,
        *,
        families: Sequence[str],
    ):
        self.redis = client
        self.records = records
        self.enqueuer = enqueuer
        self.families = tuple(families)

    def covered(self) -> tuple[set[str], dict[str, set[str]]]:
        """Who will still run each job: (the jobs a queued message or a held parent carries;
        job -> the states a job is in while the worker-held messages that carry it run it).

        A worker holds a message from its delivery to its acknowledgement (kombu's ``unacked``
        hash), claims included (the jobs a decoder gathered from other messages).
        """
        names = fleet.all_queues(self.families)
        pipe = self.redis.pipeline(transaction=False)
        for queue in names:
            for name in fleet.priority_lists(queue):
                pipe.lrange(name, 0, -1)
        pipe.hvals(UNACKED)
        *lists, unacked = pipe.execute()
        queued = [json.loads(e) for entries in lists for e in entries]
        held_raw = []
        for entry in unacked:
            try:
                held_raw.append(json.loads(entry)[0])
            except (ValueError, IndexError):
                continue
        sure: set[str] = set()
        held: dict[str, set[str]] = {}
        claimers: list[tuple[str, str | None]] = []  # (message id, state) for its claims
        for raw, in_queue in [(r, True) for r in queued] + [(r, False) for r in held_raw]:
            message_id, task, jobs = _message_jobs(raw)
            state = None if in_queue else _RUNS_IN.get(task or "", "")
            for job in jobs:
                if state is None:
                    sure.add(job)
                else:
                    held.setdefault(job, set()).add(state)
            if message_id:
                claimers.append((message_id, state))
        if claimers:
            pipe = self.redis.pipeline(transaction=False)
            for message_id, _ in claimers:
                pipe.lrange(keys.claims(message_id), 0, -1)
            for (_, state), claimed in zip(claimers, pipe.execute(), strict=True):
                for payload in claimed:
                    for job in (j["job_id"] for j in json.loads(payload)["jobs"]):
                        if state is None:
                            sure.add(job)
                        else:
                            held.setdefault(job, set()).add(state)
        return sure, held

    def _uncovered(self, campaign_id: str | None, grace_s: float) -> dict[str, float]:
        """In-flight jobs no message covers, idle for ``grace_s``: job id -> last move time."""
        members = [text(m).removeprefix(keys.job("")) for m in self.redis.smembers(keys.INFLIGHT)]
        if campaign_id:
            members = [j for j in members if j.rsplit("-", 1)[0] == campaign_id]
        if not members:
            return {}
        sure, held = self.covered()
        now, out, gone = time.time(), {}, []
        candidates = [j for j in members if j not in sure]
        running, started = self._running(candidates)
        for job_id, rec in zip(candidates, self.records.get_many(candidates), strict=True):
            if rec is None or rec.state not in ACTIVE:
                gone.append(keys.job(job_id))  # ended, or expired: not in flight
                continue
            if job_id in running:
                continue  # its execution is alive, whatever became of its message
            states = held.get(job_id)
            if states and not (rec.state.value in states and job_id in started):
                # A worker holds its message and has not started it (or the record predates
                # fencing): kombu gives the message out again after the visibility timeout.
                continue
            # Else its message's execution started and died with its worker: sent again after
            # the grace, not an hour later at the visibility timeout (the stale copy, when
            # kombu restores it, finds the job taken or done and is skipped).
            if self.redis.exists(keys.pending(job_id)):
                continue  # a chained job held for its parent
            moved_at = rec.updated_at or rec.created_at or 0.0
            if now - moved_at >= grace_s:
                out[job_id] = moved_at
        if gone:
            self.redis.srem(keys.INFLIGHT, *gone)
        return out

    def _running(self, job_ids: list[str]) -> tuple[set[str], set[str]]:
        """(The jobs whose current execution says it is alive (``workers.liveness``), the jobs
        an execution started at all.)"""
        executions = self.records.executions(job_ids)
        started = [(j, e) for j, e in zip(job_ids, executions, strict=True) if e]
        if not started:
            return set(), set()
        pipe = self.redis.pipeline(transaction=False)
        for _, execution in started:
            pipe.exists(keys.running(execution))
        alive = {j for (j, _), n in zip(started, pipe.execute(), strict=True) if n}
        return alive, {j for j, _ in started}

    def give_back(self, confirm_s: float = CONFIRM_S) -> list[str]:
        """Put the messages of worker processes that died holding them back on their queues
        (``farm.stores.unacked``). Returns their message ids."""
        held = HeldMessages(self.redis, fleet.all_queues(self.families))
        messages = held.scan()
        dead = held.dead(messages, confirm_s)
        back = [m for m in messages if m.holder_id in dead and held.give_back(m)]
        for holder in sorted({m.holder_id for m in back if m.holder_id}):
            mine = [m.message_id or m.tag for m in back if m.holder_id == holder]
            log.warning("%s died holding %d messages: back in their queues", holder, len(mine))
        return [m.message_id or m.tag for m in back]

    def reconcile(
        self, grace_s: float = 60.0, *, campaign_id: str | None = None, recheck_s: float = RECHECK_S
    ) -> list[str]:
        """Send again every stranded job (of one campaign, or all), after giving back the
        messages of dead workers (whose jobs are then queued, not stranded). Returns their ids."""
        self.give_back()
        first = self._uncovered(campaign_id, grace_s)
        if not first:
            return []
        time.sleep(recheck_s)
        second = self._uncovered(campaign_id, grace_s)
        stranded = [j for j, at in second.items() if first.get(j) == at]
        if not stranded:
            return []
        by_campaign: dict[str, list[str]] = {}
        for job_id in stranded:
            by_campaign.setdefault(job_id.rsplit("-", 1)[0], []).append(job_id)
        sent = []
        for cid, ids in by_campaign.items():
            info = self.records.campaign(cid)
            if info is None:
                continue
            # Only if still unmoved since the scans: a concurrent reconciler or resume that
            # saw the same job sends it, not both.
            since = {j: second[j] for j in ids}
            moved = self.records.move_many(cid, ids, JobState.QUEUED, ACTIVE, unmoved_since=since)
            # Their delivery counts stay: a job that keeps dying is still a poison job.
            again = self.enqueuer.send_again(cid, info["tenant"], moved)
            log.warning("campaign %s: %d jobs no message carried: sent again", cid, len(again))
            sent += again
        return sent
