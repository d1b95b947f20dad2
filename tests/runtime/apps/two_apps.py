"""A sample v2-model module with two function app instances: the Python worker refuses to index it."""

# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
durable = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="one")
def one(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("one")


@durable.route(route="two")
def two(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("two")
