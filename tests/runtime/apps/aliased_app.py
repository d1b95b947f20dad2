"""A sample v2-model module binding its one app to two names: the Python worker counts each name, so it refuses
this too."""

# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
main = app


@app.route(route="one")
def one(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("one")
