"""The farm's one error tree, with the HTTP status each maps to (``http_status``, read by the API).

    FarmError                 500
    ├── InvalidJob            422  bad input; nothing was enqueued
    │   └── InputNotFound     404  a job names an upload that does not exist (nothing enqueued)
    ├── NotFound              404  an unknown job or campaign id (or another tenant's)
    ├── Unauthorized          401  a missing or unknown API token
    ├── Conflict              409  an Idempotency-Key reused with a different request
    ├── ServiceUnavailable    503  Redis or S3 cannot be reached (transient: retry later)
    ├── ConfigError           503  settings that cannot work together (the server cannot serve)
    ├── ModelError            503  a model part that is missing or cannot be loaded
    ├── StackError            503  the local stack cannot be started or stopped
    ├── JobFailed             409  a job ended in failure (carries the worker's error type + message)
    └── PoisonJob             500  recorded on a job that killed a worker on every delivery

Lower-level errors (redis ``ConnectionError``, botocore ``ClientError``, diffusers' loading errors)
are mapped to these at the boundary with ``raise ... from e``.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base class of every error the farm raises on purpose."""

    http_status = 500


class InvalidJob(FarmError):
    """Raised when a job spec breaks a rule; names the field and the limit."""

    http_status = 422

    def __init__(self, field: str, message: str, *, index: int | None = None):
        self.field = field
        self.index = index  # position in a submitted list, if any
        self.reason = message
        where = f"jobs[{index}].{field}" if index is not None else field
        super().__init__(f"{where}: {message}")

    def to_dict(self) -> dict:
        return {"field": self.field, "index": self.index, "message": self.reason}


class InputNotFound(InvalidJob):
    """Raised when a job reads an upload (``in:...``) that was never stored: a missing object
    a request names, a 404 as Stripe's ``resource_missing`` and OpenAI's "No such File"."""

    http_status = 404


class ConfigError(FarmError):
    """Raised when settings are missing or contradict each other."""

    http_status = 503


class ModelError(FarmError):
    """Raised when a model id or folder cannot be resolved or loaded."""

    http_status = 503


class NotFound(FarmError):
    """Raised when a job or campaign id is unknown."""

    http_status = 404


class Unauthorized(FarmError):
    """Raised when an API request carries no token or an unknown one."""

    http_status = 401


class Conflict(FarmError):
    """Raised when an Idempotency-Key is reused with a different request body."""

    http_status = 409


class QuotaExceeded(FarmError):
    """Raised when a submission would take a tenant past its queued-jobs quota."""

    http_status = 429


class ServiceUnavailable(FarmError):
    """Raised when Redis or S3 cannot be reached; the operation may succeed later."""

    http_status = 503


class StackError(FarmError):
    """Raised when the local stack (embedded servers, workers, Flower) fails to start or stop."""

    http_status = 503


class JobFailed(FarmError):
    """Raised when waiting on a job that ended in failure."""

    http_status = 409

    def __init__(self, job_id: str, error_type: str, message: str):
        self.job_id = job_id
        self.error_type = error_type
        self.reason = message
        super().__init__(f"job {job_id} failed: {error_type}: {message}")


class PoisonJob(FarmError):
    """Raised (and recorded) when a job keeps killing workers and has used up its attempts."""
