"""The approvers' review page: ``GET /review`` and its two assets, ``GET /review/assets/{name}``.

Static files from ``review_assets/`` next to this module; the page itself holds no data. The browser calls the
change API (``/api/v1/changes...``), which authenticates and authorises every call: in Azure, App Service
Authentication (Easy Auth) turns the browser's session cookie into ``X-MS-CLIENT-PRINCIPAL`` on each request. So
these functions need no identity, and ``/review`` and ``/review/assets/*`` are in Easy Auth's ``excludedPaths``
(``infra/app/easyauth.json``): a signed-out person gets the page, which asks ``/.auth/me`` and sends them to
``/.auth/login/aad?post_login_redirect_uri=/review``. Locally the same happens under the emulation
(``WRITEBACK_DEV_EASYAUTH=1``); without it there is no ``/.auth/me`` and the page's "local sign-in" panel builds
the header itself.

Every answer carries a strict Content-Security-Policy (this origin only; no inline script or style, no eval,
Trusted Types with no policy so no HTML-string sink can be used), ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()

ASSET_DIR = Path(__file__).with_name("review_assets")
PAGE = "index.html"
# The only files served, with their content types; any other name is 404 (no path from the URL reaches the disk).
ASSETS = {"review.css": "text/css; charset=utf-8", "review.js": "text/javascript; charset=utf-8"}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _file(name: str, content_type: str) -> func.HttpResponse:
    body = (ASSET_DIR / name).read_bytes()
    return func.HttpResponse(body=body, status_code=200, headers={**SECURITY_HEADERS, "Content-Type": content_type})


@bp.route(route="review", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def review_page(req: func.HttpRequest) -> func.HttpResponse:
    return _file(PAGE, "text/html; charset=utf-8")


@bp.route(route="review/assets/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def review_asset(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    content_type = ASSETS.get(name)
    if content_type is None:
        return func.HttpResponse(
            body=b"Not found",
            status_code=404,
            headers={**SECURITY_HEADERS, "Content-Type": "text/plain; charset=utf-8"},
        )
    return _file(name, content_type)
