"""A sample v2-model module with functions on a Blueprint but no app to register it: nothing to index."""

# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="orphan")
def orphan(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("never served")
