"""The one error tree of the gateway.

Every failure the gateway knows about is a ``WritebackError``. Each class carries the HTTP status it maps to
when it reaches a caller, a stable ``code`` for machines, and ``issues`` naming the offending element paths.
Downstream (FHIR) failures are split by what the orchestrator should do next: retry, stop, or ask a human.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Issue:
    """One problem with one element: ``path`` is a JSON pointer or FHIR element path."""

    path: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "code": self.code, "message": self.message}


@dataclass(eq=False)
class WritebackError(Exception):
    """Base of every error the gateway raises on purpose."""

    detail: str = ""
    issues: list[Issue] = field(default_factory=list)

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __post_init__(self) -> None:
        super().__init__(self.detail or self.title)

    def __str__(self) -> str:
        return self.detail or self.title


# --- caller errors (4xx from our own API) -------------------------------------------------------------


@dataclass(eq=False)
class RequestError(WritebackError):
    """The caller sent something we cannot accept; nothing was stored or written."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid-request"
    title: ClassVar[str] = "Invalid request"


@dataclass(eq=False)
class FhirValidationError(RequestError):
    """The proposed resource is not valid FHIR R4; ``operation_outcome`` is returned to the caller."""

    code: ClassVar[str] = "invalid-resource"
    title: ClassVar[str] = "Invalid FHIR resource"
    operation_outcome: dict[str, Any] | None = None


@dataclass(eq=False)
class PayloadTooLargeError(RequestError):
    status: ClassVar[int] = 413
    code: ClassVar[str] = "payload-too-large"
    title: ClassVar[str] = "Payload too large"


@dataclass(eq=False)
class UnsupportedMediaTypeError(RequestError):
    status: ClassVar[int] = 415
    code: ClassVar[str] = "unsupported-media-type"
    title: ClassVar[str] = "The body must be JSON"


@dataclass(eq=False)
class NotFoundError(RequestError):
    status: ClassVar[int] = 404
    code: ClassVar[str] = "not-found"
    title: ClassVar[str] = "Not found"


@dataclass(eq=False)
class IdempotencyKeyInUseError(RequestError):
    """Same key while the first request is still being taken in."""

    status: ClassVar[int] = 409
    code: ClassVar[str] = "idempotency-key-in-use"
    title: ClassVar[str] = "Idempotency key in use"


@dataclass(eq=False)
class IdempotencyKeyMismatchError(RequestError):
    """Same key, different request body."""

    status: ClassVar[int] = 422
    code: ClassVar[str] = "idempotency-key-reused"
    title: ClassVar[str] = "Idempotency key reused with a different request"


@dataclass(eq=False)
class StateConflictError(RequestError):
    """The change is not in a state that allows the operation (e.g. approving a completed change)."""

    status: ClassVar[int] = 409
    code: ClassVar[str] = "invalid-state"
    title: ClassVar[str] = "Change is not in a state that allows this"


@dataclass(eq=False)
class RateLimitedError(RequestError):
    """The caller sent more requests than its rate limit allows; ``retry_after`` seconds until the next is taken."""

    status: ClassVar[int] = 429
    code: ClassVar[str] = "rate-limited"
    title: ClassVar[str] = "Too many requests"
    retry_after: float | None = None


@dataclass(eq=False)
class PayloadPurgedError(StateConflictError):
    """The change's request body, planned resource and values were purged after its retention: it cannot run
    again."""

    code: ClassVar[str] = "payload-purged"
    title: ClassVar[str] = "The change's payload was purged"


@dataclass(eq=False)
class ForbiddenError(RequestError):
    status: ClassVar[int] = 403
    code: ClassVar[str] = "forbidden"
    title: ClassVar[str] = "Forbidden"


@dataclass(eq=False)
class FrontNotVerifiedError(WritebackError):
    """In Azure, the ``easyauth`` mode with no sign that App Service Authentication is in front."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "easy-auth-not-verified"
    title: ClassVar[str] = "App Service Authentication is not known to be on"


@dataclass(eq=False)
class GoneError(RequestError):
    """An endpoint that moved for good; the detail says where."""

    status: ClassVar[int] = 410
    code: ClassVar[str] = "gone"
    title: ClassVar[str] = "This endpoint has moved"


@dataclass(eq=False)
class UnauthenticatedError(RequestError):
    status: ClassVar[int] = 401
    code: ClassVar[str] = "unauthenticated"
    title: ClassVar[str] = "Unauthenticated"


# --- storage errors ------------------------------------------------------------------------------------


@dataclass(eq=False)
class AlreadyExistsError(WritebackError):
    """An insert found the row already there (the atomic "claim" lost)."""

    status: ClassVar[int] = 409
    code: ClassVar[str] = "already-exists"
    title: ClassVar[str] = "Already exists"


@dataclass(eq=False)
class ConcurrencyError(WritebackError):
    """Optimistic concurrency failed: the stored ETag moved since it was read."""

    status: ClassVar[int] = 412
    code: ClassVar[str] = "etag-mismatch"
    title: ClassVar[str] = "Stored row changed since it was read"


@dataclass(eq=False)
class StorageUnavailableError(WritebackError):
    """Table or Blob storage did not answer in time, or could not serve (408, 429, 5xx after the SDK's retries).

    Retryable: the same request may succeed later. A caller gets 503 with ``Retry-After`` (``retry_after`` seconds);
    an activity raising it is retried by the orchestration.
    """

    status: ClassVar[int] = 503
    code: ClassVar[str] = "storage-unavailable"
    title: ClassVar[str] = "Storage temporarily unavailable"
    retry_after: float | None = None


# --- downstream (target FHIR server) errors ------------------------------------------------------------


@dataclass(eq=False)
class DownstreamError(WritebackError):
    """Any failure talking to a target system."""

    status: ClassVar[int] = 502
    code: ClassVar[str] = "downstream-error"
    title: ClassVar[str] = "Target system error"
    downstream_status: int | None = None
    operation_outcome: dict[str, Any] | None = None


@dataclass(eq=False)
class RetryableError(DownstreamError):
    """Throttled, unavailable or timed out: try again later, honouring ``retry_after`` seconds when given."""

    code: ClassVar[str] = "downstream-retryable"
    title: ClassVar[str] = "Target system temporarily unavailable"
    retry_after: float | None = None


@dataclass(eq=False)
class PermanentError(DownstreamError):
    """The target refused the request for good (4xx other than 401/403/409/412/429)."""

    code: ClassVar[str] = "downstream-rejected"
    title: ClassVar[str] = "Target system rejected the request"


@dataclass(eq=False)
class TargetNotReadyError(PermanentError):
    """A known target this deployment cannot write to: no base URL set, or a loopback one in Azure.

    ``503`` at intake: the request is valid and the deployment is at fault (an operator sets the URL; the same
    request then goes through). In the pipeline the change fails at once rather than retrying, so an operator's
    replay (``errorCode: target-not-ready``) picks it up once the target is configured.
    """

    status: ClassVar[int] = 503
    code: ClassVar[str] = "target-not-ready"
    title: ClassVar[str] = "The target is not ready in this deployment"


@dataclass(eq=False)
class AuthError(DownstreamError):
    """401/403 from the target, or no token could be had for it."""

    code: ClassVar[str] = "downstream-auth"
    title: ClassVar[str] = "Not authorised at the target system"


@dataclass(eq=False)
class ConflictError(DownstreamError):
    """412 (or 409) from the target: the version we based the write on is no longer current."""

    status: ClassVar[int] = 409
    code: ClassVar[str] = "version-conflict"
    title: ClassVar[str] = "Target resource changed since it was read"


@dataclass(eq=False)
class DownstreamNotFoundError(NotFoundError, DownstreamError):
    """404/410 from the target. Both ``except NotFoundError`` and ``except DownstreamError`` catch it."""

    status: ClassVar[int] = 404
    code: ClassVar[str] = "downstream-not-found"
    title: ClassVar[str] = "Resource not found at the target system"


@dataclass(eq=False)
class ConfigurationError(WritebackError):
    """Settings, targets or policy are invalid; raised at start-up with a message naming the field."""

    code: ClassVar[str] = "configuration-error"
    title: ClassVar[str] = "Invalid configuration"
