"""The edge of every storage adapter: its tables (or container) made on first use, and outages translated.

``storage_adapter(ensure)`` decorates an adapter class; each public method then

- first runs the adapter's ``ensure`` method (``ensure_tables``, ``ensure_container``) once per adapter instance, so
  building the gateway's parts does no I/O: with storage down, the first request that needs it is the one to fail,
  inside the HTTP API's error handling (503), not the construction of the API objects before it (a bare 500);
- raises ``StorageUnavailableError`` (retryable, 503 with ``Retry-After``) for a storage outage it lets through
  (``storage_errors.is_outage``), instead of the SDK's exception, which reached callers as a 500 and made an
  activity fail as if for good.

Methods still translate what they expect themselves (a missing row, a lost race); this is the net under them, so a
method added later is covered too. A public method must not return a lazy iterator over storage (none does): an
outage while iterating it would escape the net.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import AzureError

from shared.adapters.storage_errors import is_outage, unavailable

C = TypeVar("C", bound=type)
_READY = "_storage_ready"


def _edge(method: Callable[..., Any], ensure: str) -> Callable[..., Any]:
    is_ensure = method.__name__ == ensure

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if is_ensure:
                method(self, *args, **kwargs)
                setattr(self, _READY, True)
                return None
            if not getattr(self, _READY, False):
                getattr(self, ensure)()
            return method(self, *args, **kwargs)
        except AzureError as exc:
            if is_outage(exc):
                raise unavailable(exc) from exc
            raise

    return call


def storage_adapter(ensure: str) -> Callable[[C], C]:
    """Class decorator (see the module docstring); ``ensure`` names the method that creates what the adapter uses."""

    def decorate(cls: C) -> C:
        if not inspect.isfunction(vars(cls).get(ensure)):
            raise TypeError(f"{cls.__name__} has no method {ensure}")
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(member):
                setattr(cls, name, _edge(member, ensure))
        return cls

    return decorate
