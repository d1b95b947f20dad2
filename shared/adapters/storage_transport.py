"""The HTTP transport of the Storage clients: requests, with the environment read once per host.

With its default settings, requests looks through the whole process environment on every request for proxy variables
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``, ...) and the CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``),
and stats ``~/.netrc``, a noticeable share of the CPU of a small Table request. The environment does not change while
the app runs, so :class:`EnvironmentOnceTransport` asks requests for those settings once per scheme and host and
passes them explicitly on each request: the proxies (``NO_PROXY`` included) and the CA bundle that requests would
have read. ``~/.netrc`` is not read: the Storage clients sign every request themselves, so a netrc entry could only
replace their ``Authorization`` header.

``table_client_options`` and ``blob_client_options`` are what the composition root builds the Storage clients with:
this transport, bounded timeouts and few retries. The SDKs' defaults are 300 s to connect and 300 s per read
(azure-core ``ConnectionConfiguration``), and 10 retries for Tables (azure-core ``RetryPolicy``) or 3 retries 15 s
and more apart for Blob (azure-storage-blob ``ExponentialRetry``): storage that does not answer held a request for
minutes, past the Functions host's HTTP limit, before any error came back. A read timeout below 30 s can cut short
a write that Table Storage is still allowed to run (its server timeout is 30 s:
https://learn.microsoft.com/rest/api/storageservices/setting-timeouts-for-table-service-operations); the adapters'
writes are conditional or idempotent, so the retry that follows finds what happened.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import ExponentialRetry

BLOB_RETRY_FIRST_BACKOFF_SECONDS = 1


class EnvironmentOnceTransport(RequestsTransport):  # type: ignore[misc]  # azure-core ships no stubs for it
    """A ``RequestsTransport`` that resolves proxies and the CA bundle once per scheme and host."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(use_env_settings=False, **kwargs)
        self._per_host: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def send(self, request: Any, **kwargs: Any) -> Any:
        settings = self.environment_for(request.url)
        kwargs.setdefault("proxies", settings["proxies"])
        if self.connection_config.verify is True and settings["verify"] is not True:
            kwargs.setdefault("connection_verify", settings["verify"])
        return super().send(request, **kwargs)

    def environment_for(self, url: str) -> dict[str, Any]:
        """What requests would read from the environment for ``url``: its proxies and its ``verify``."""
        parts = urlsplit(url)
        host = (parts.scheme, parts.netloc)
        settings = self._per_host.get(host)
        if settings is None:
            with requests.Session() as probe:  # trust_env on: the environment as requests reads it
                merged = probe.merge_environment_settings(url, {}, None, True, None)
            settings = {"proxies": dict(merged["proxies"]), "verify": merged["verify"]}
            with self._lock:
                self._per_host[host] = settings
        return settings


def table_client_options(*, connect_timeout: float, read_timeout: float, retries: int) -> dict[str, Any]:
    """Keyword arguments for a ``TableServiceClient``: the transport, its timeouts (seconds), the retries."""
    transport = EnvironmentOnceTransport(connection_timeout=connect_timeout, read_timeout=read_timeout)
    return {"transport": transport, "retry_total": retries}


def blob_client_options(*, connect_timeout: float, read_timeout: float, retries: int) -> dict[str, Any]:
    """Keyword arguments for a ``BlobServiceClient``: as for Tables, with retries about 1 s, 3 s, 5 s... apart."""
    transport = EnvironmentOnceTransport(connection_timeout=connect_timeout, read_timeout=read_timeout)
    retry = ExponentialRetry(
        initial_backoff=BLOB_RETRY_FIRST_BACKOFF_SECONDS, increment_base=2, retry_total=retries, random_jitter_range=1
    )
    return {"transport": transport, "retry_policy": retry}
