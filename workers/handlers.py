"""What each task does around its stage function: state moves, guards, IO, the next hop.

Kept apart from the Celery adapters (``tasks.py``), which only unpack messages and map errors to
Celery's retries: these functions take a ``WorkerContext`` (its Redis, S3, Celery app to send the
next hop with, and the worker's models). A message carries a batch of compatible jobs; Redis
work is done a batch at a time (one round trip per step, not per job). Every state change goes
through RecordStore's transition script, which checks the state it leaves: a cancelled or
finished job is never picked up again, whatever messages are still queued for it.
"""

from __future__ import annotations

# The handlers live by stage (``prior``, ``decoder``, ``ending``: finalize and the webhook), with
# what they share in ``common``; the task adapters (``tasks.py``) reach them all through here.
from workers.common import Execution, fail, split
from workers.decoder import decoder
from workers.ending import finalize, webhook
from workers.prior import prior

__all__ = ["Execution", "decoder", "fail", "finalize", "prior", "split", "webhook"]
