"""Between the host's HTTP types and the core's ``ApiResponse``: headers in, response out."""

from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from shared.api.responses import ApiResponse
from shared.config import get_settings


def headers_of(req: func.HttpRequest) -> dict[str, str]:
    return {k: v for k, v in req.headers.items()}


def base_url_of(req: func.HttpRequest) -> str:
    """The origin that ``Location`` and links name: ``WRITEBACK_PUBLIC_BASE_URL`` when set; else the one the
    caller used. ``X-Forwarded-Host`` is taken only from a front listed in ``WRITEBACK_TRUSTED_FORWARDED_HOSTS``
    (anyone can send the header: trusted blindly, it would point links, and approvers, at another host)."""
    settings = get_settings()
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    parts = urlsplit(req.url)
    scheme = req.headers.get("x-forwarded-proto") or parts.scheme
    forwarded = (req.headers.get("x-forwarded-host") or "").strip().lower()
    host = forwarded if forwarded and forwarded in settings.trusted_forwarded_host_set else parts.netloc
    return f"{scheme}://{host}"


def to_http_response(resp: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        body=resp.body_bytes(), status_code=resp.status, headers=resp.headers, mimetype=resp.content_type
    )
