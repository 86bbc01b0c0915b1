"""Reconciling: jobs in flight that no message carries any more are sent again, by themselves.

A job is *in flight* from the moment it is fed until it ends (the set ``farm:inflight`` follows
every state move). It is *covered* while some message will still run it: a message waiting in
one of its queues, one a worker holds (kombu's ``unacked`` hash: delivered, not acknowledged),
the claims of either (jobs a decoder gathered from other messages), its held chained message,
or an execution that says it is alive (``workers.liveness``: the job is running now). A fault can leave a job in flight and uncovered: Redis restarted from an AOF a second
behind, a message lost with a worker's connection, a feeder that died mid-range. Such a job
would wait for a human forever; the reconciler (run by the feeder) sends it again.

It errs on the side of waiting: a job counts as stranded only when it is uncovered in two scans
some seconds apart, with no state move in between and none for ``grace_s`` before. A message
between its queue and the unacked hash (kombu moves it in two steps) is caught by the second
scan. Sending a job again is safe in any case: the state machine refuses a job that ended, and
its image key is its own.
"""

from __future__ import annotations

import base64
import json
import logging
import time

from farm import fleet, keys
from farm.domain.jobs import JobState
from farm.stores.records import ACTIVE

log = logging.getLogger("farm.reconciler")

RECHECK_S = 2.0


def _message_jobs(raw: dict) -> tuple[str | None, list[str]]:
    """A kombu message's id and the job ids it carries (empty for other tasks)."""
    try:
        args, kwargs, _ = json.loads(base64.b64decode(raw["body"]))
    except (KeyError, ValueError, TypeError):
        return None, []
    jobs = kwargs.get("jobs") or ([kwargs] if kwargs.get("job_id") else [])
    return raw.get("headers", {}).get("id"), [j["job_id"] for j in jobs if "job_id" in j]


class Reconciling:
    """Farm's reconciling verbs (mixed into ``Farm``)."""

    def covered(self) -> set[str]:
        """Job ids some message (queued, held by a worker, claimed, or held for a parent) will
        still run."""
        messages: list[dict] = []
        names = fleet.all_queues(self.settings.enabled_families)
        pipe = self.redis.pipeline(transaction=False)
        for queue in names:
            for name in fleet.priority_lists(queue):
                pipe.lrange(name, 0, -1)
        pipe.hvals("unacked")
        *lists, unacked = pipe.execute()
        for entries in lists:
            messages += [json.loads(e) for e in entries]
        for entry in unacked:
            try:
                messages.append(json.loads(entry)[0])
            except (ValueError, IndexError):
                continue
        out: set[str] = set()
        ids = []
        for raw in messages:
            message_id, jobs = _message_jobs(raw)
            out.update(jobs)
            if message_id:
                ids.append(message_id)
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            for message_id in ids:
                pipe.lrange(keys.claims(message_id), 0, -1)
            for claimed in pipe.execute():
                for payload in claimed:
                    out.update(j["job_id"] for j in json.loads(payload)["jobs"])
        return out

    def _uncovered(self, campaign_id: str | None, grace_s: float) -> dict[str, float]:
        """In-flight jobs no message covers, idle for ``grace_s``: job id -> last move time."""
        members = [
            m.decode().removeprefix(keys.job("")) for m in self.redis.smembers(keys.INFLIGHT)
        ]
        if campaign_id:
            members = [j for j in members if j.rsplit("-", 1)[0] == campaign_id]
        if not members:
            return {}
        covered = self.covered()
        now, out, gone = time.time(), {}, []
        candidates = [j for j in members if j not in covered]
        running = self._running(candidates)
        for job_id, rec in zip(candidates, self.records.get_many(candidates), strict=True):
            if rec is None or rec.state not in ACTIVE:
                gone.append(keys.job(job_id))  # ended, or expired: not in flight
                continue
            if job_id in running:
                continue  # its execution is alive, whatever became of its message
            if self.redis.exists(keys.pending(job_id)):
                continue  # a chained job held for its parent
            moved_at = rec.updated_at or rec.created_at or 0.0
            if now - moved_at >= grace_s:
                out[job_id] = moved_at
        if gone:
            self.redis.srem(keys.INFLIGHT, *gone)
        return out

    def _running(self, job_ids: list[str]) -> set[str]:
        """The jobs whose current execution says it is alive (``workers.liveness``)."""
        executions = self.records.executions(job_ids)
        held = [(j, e) for j, e in zip(job_ids, executions, strict=True) if e]
        if not held:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for _, execution in held:
            pipe.exists(keys.running(execution))
        return {j for (j, _), n in zip(held, pipe.execute(), strict=True) if n}

    def reconcile(
        self, grace_s: float = 60.0, *, campaign_id: str | None = None, recheck_s: float = RECHECK_S
    ) -> list[str]:
        """Send again every stranded job (of one campaign, or all). Returns their ids."""
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
            again = self._send_again(cid, info["tenant"], moved)
            log.warning("campaign %s: %d jobs no message carried: sent again", cid, len(again))
            sent += again
        return sent
