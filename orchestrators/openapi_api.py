"""``GET /api/v1/openapi.json``: the API's OpenAPI 2.0 document, for Power Automate / Logic Apps custom connectors."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import azure.durable_functions as df
import azure.functions as func

from orchestrators.http_adapter import base_url_of
from shared.api.openapi import openapi_document

bp = df.Blueprint()


@bp.route(route="api/v1/openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi_json(req: func.HttpRequest) -> func.HttpResponse:
    host = urlsplit(base_url_of(req)).netloc or None
    body = json.dumps(openapi_document(host=host), ensure_ascii=False)
    return func.HttpResponse(body, status_code=200, mimetype="application/json")
