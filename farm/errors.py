"""The farm's one error tree.

    FarmError
    ├── InvalidJob            bad input; nothing was enqueued
    ├── ConfigError           settings that cannot work together
    ├── ModelError            a model id or folder that cannot be loaded
    ├── NotFound              an unknown job or campaign id (or another tenant's)
    ├── Unauthorized          a missing or unknown API token
    ├── Conflict              an Idempotency-Key reused with a different request
    ├── ServiceUnavailable    Redis or S3 cannot be reached (transient: retry later)
    ├── StackError            the local stack cannot be started or stopped
    └── JobFailed             a job ended in failure (carries the worker's error type + message)

Lower-level errors (redis ``ConnectionError``, botocore ``ClientError``, diffusers' loading errors)
are mapped to these at the boundary with ``raise ... from e``.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base class of every error the farm raises on purpose."""


class InvalidJob(FarmError):
    """Raised when a job spec breaks a rule; names the field and the limit."""

    def __init__(self, field: str, message: str, *, index: int | None = None):
        self.field = field
        self.index = index  # position in a submitted list, if any
        self.reason = message
        where = f"jobs[{index}].{field}" if index is not None else field
        super().__init__(f"{where}: {message}")

    def to_dict(self) -> dict:
        return {"field": self.field, "index": self.index, "message": self.reason}


class ConfigError(FarmError):
    """Raised when settings are missing or contradict each other."""


class ModelError(FarmError):
    """Raised when a model id or folder cannot be resolved or loaded."""


class NotFound(FarmError):
    """Raised when a job or campaign id is unknown."""


class Unauthorized(FarmError):
    """Raised when an API request carries no token or an unknown one."""


class Conflict(FarmError):
    """Raised when an Idempotency-Key is reused with a different request body."""


class ServiceUnavailable(FarmError):
    """Raised when Redis or S3 cannot be reached; the operation may succeed later."""


class StackError(FarmError):
    """Raised when the local stack (embedded servers, workers, Flower) fails to start or stop."""


class JobFailed(FarmError):
    """Raised when waiting on a job that ended in failure."""

    def __init__(self, job_id: str, error_type: str, message: str):
        self.job_id = job_id
        self.error_type = error_type
        self.reason = message
        super().__init__(f"job {job_id} failed: {error_type}: {message}")


class PoisonJob(FarmError):
    """Raised (and recorded) when a job keeps killing workers and has used up its attempts."""
