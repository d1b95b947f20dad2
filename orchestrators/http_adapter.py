"""Between the host's HTTP types and the core's ``ApiResponse``: headers in, response out."""

from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from shared.api.responses import ApiResponse


def headers_of(req: func.HttpRequest) -> dict[str, str]:
    return {k: v for k, v in req.headers.items()}


def base_url_of(req: func.HttpRequest) -> str:
    """scheme://host[:port] the caller used (behind App Service, X-Forwarded-* tell the public one)."""
    parts = urlsplit(req.url)
    scheme = req.headers.get("x-forwarded-proto") or parts.scheme
    host = req.headers.get("x-forwarded-host") or parts.netloc
    return f"{scheme}://{host}"


def to_http_response(resp: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        body=resp.body_bytes(), status_code=resp.status, headers=resp.headers, mimetype=resp.content_type
    )
