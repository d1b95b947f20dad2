"""The one place Azure Storage SDK exceptions become the gateway's error tree.

``storage_error`` maps one failure: an insert that found its row (``AlreadyExistsError``), a stale ETag
(``ConcurrencyError``), a missing row (``NotFoundError``), and storage that did not answer or answered that it could
not serve (``StorageUnavailableError``, retryable: HTTP 503 with ``Retry-After``). A storage outage is the last: a
connection refused or timed out (azure-core's ``ServiceRequestError``), no answer within the read timeout or a
connection dropped mid-answer (``ServiceResponseError``, ``IncompleteReadError``), and ``408``, ``429`` or ``5xx``
left after the SDK's own retries (every Storage service answers ``503 ServerBusy`` when throttling, ``500
OperationTimedOut`` when an operation overran and ``500 InternalError``, all to be retried:
https://learn.microsoft.com/rest/api/storageservices/common-rest-api-error-codes).

``storage_edge.storage_adapter`` applies it at every adapter's edge. Other SDK failures (a ``400``, an
authentication refusal) are left as they are: they are bugs or configuration, not something a retry fixes.
"""

from __future__ import annotations

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.core.errors import (
    AlreadyExistsError,
    ConcurrencyError,
    NotFoundError,
    StorageUnavailableError,
    WritebackError,
)

RETRY_AFTER_SECONDS = 5.0
"""What a caller is told to wait after a storage outage (``Retry-After``): the SDK has already retried meanwhile."""
_UNAVAILABLE_STATUSES = frozenset({408, 429})


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says storage did not answer, or could not serve for now (a later try may succeed)."""
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, IncompleteReadError)):
        return True
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        return status is not None and (status >= 500 or status in _UNAVAILABLE_STATUSES)
    return False


def unavailable(exc: AzureError) -> StorageUnavailableError:
    """The outage ``exc`` as our error: its kind and status only (an SDK message can quote the request)."""
    status = getattr(exc, "status_code", None)
    answered = f"answered {status}" if status else f"did not answer ({type(exc).__name__})"
    return StorageUnavailableError(
        detail=f"The gateway's storage {answered}; try again later", retry_after=RETRY_AFTER_SECONDS
    )


def storage_error(exc: AzureError, what: str) -> WritebackError | AzureError:
    """Translate a storage failure about ``what``; unknown failures are returned unchanged to be re-raised."""
    if is_outage(exc):
        return unavailable(exc)
    if not isinstance(exc, HttpResponseError):
        return exc
    status = exc.status_code
    code = str(getattr(exc, "error_code", "") or "")
    if isinstance(exc, ResourceExistsError) or status == 409 or code == "EntityAlreadyExists":
        return AlreadyExistsError(f"{what} already exists")
    if isinstance(exc, ResourceModifiedError) or status == 412 or code in ("UpdateConditionNotSatisfied",):
        return ConcurrencyError(f"{what} changed since it was read")
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFoundError(f"{what} not found")
    return exc
