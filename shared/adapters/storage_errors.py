"""The one place Azure Storage SDK exceptions become the gateway's error tree."""

from __future__ import annotations

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

from shared.core.errors import AlreadyExistsError, ConcurrencyError, NotFoundError, WritebackError


def storage_error(exc: HttpResponseError, what: str) -> WritebackError | HttpResponseError:
    """Translate a storage failure about ``what``; unknown failures are returned unchanged to be re-raised."""
    status = exc.status_code
    code = str(getattr(exc, "error_code", "") or "")
    if isinstance(exc, ResourceExistsError) or status == 409 or code == "EntityAlreadyExists":
        return AlreadyExistsError(f"{what} already exists")
    if isinstance(exc, ResourceModifiedError) or status == 412 or code in ("UpdateConditionNotSatisfied",):
        return ConcurrencyError(f"{what} changed since it was read")
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFoundError(f"{what} not found")
    return exc
