"""The approval webhook: POSTs an approval notification to a Power Automate or Logic Apps flow.

The webhook URL holds the flow's SAS signature (``sig``), so it is a secret: it never appears in errors, logs or
``repr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.core.errors import ConfigurationError, PermanentError, RetryableError
from shared.core.fhir_headers import parse_retry_after

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class WebhookNotifier:
    """POSTs notifications to the approval webhook. 408 / 429 / 5xx / no answer → RetryableError (``retry_after``
    from ``Retry-After``); any other non-2xx → PermanentError. Redirects are not followed: a flow's trigger URL
    answers directly, and following one would send the payload somewhere the setting did not name."""

    def __init__(self, webhook_url: str, *, http: httpx.Client | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(webhook_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("WRITEBACK_APPROVAL_WEBHOOK_URL: must be an http(s) URL")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            raise ConfigurationError("WRITEBACK_APPROVAL_WEBHOOK_URL: must be https (http only for a loopback host)")
        self._url = webhook_url
        self._host = parts.hostname
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(follow_redirects=False)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"WebhookNotifier(host={self._host!r})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, payload: Mapping[str, Any]) -> None:
        try:
            response = self._http.post(
                self._url,
                json=dict(payload),
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                follow_redirects=False,
            )
        except httpx.TimeoutException:
            # ``from None``: httpx exceptions can carry the request, and so the URL with its SAS signature.
            raise RetryableError("approval webhook timed out") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"approval webhook unreachable ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"approval webhook answered {status}"
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RetryableError(detail, downstream_status=status, retry_after=retry_after)
        raise PermanentError(detail, downstream_status=status)
