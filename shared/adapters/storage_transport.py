"""The HTTP transport of the Storage clients: requests, with the environment read once per host.

With its default settings, requests looks through the whole process environment on every request for proxy variables
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``, ...) and the CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``),
and stats ``~/.netrc``, a noticeable share of the CPU of a small Table request. The environment does not change while
the app runs, so :class:`EnvironmentOnceTransport` asks requests for those settings once per scheme and host and
passes them explicitly on each request: the proxies (``NO_PROXY`` included) and the CA bundle that requests would
have read. ``~/.netrc`` is not read: the Storage clients sign every request themselves, so a netrc entry could only
replace their ``Authorization`` header.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.pipeline.transport import RequestsTransport


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
