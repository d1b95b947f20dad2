"""A sample v2-model app whose app object is not named ``app``: the Python worker indexes any module-level
``FunctionRegister`` (``FunctionApp``, ``DFApp``), whatever its name. A module-level Blueprint is not one."""

# The Functions decorators are untyped (as for function_app.py in pyproject.toml); the functions they wrap are typed.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()


@bp.route(route="hello", methods=["GET"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("hello from the app named gateway", status_code=200)


@bp.activity_trigger(input_name="name")
def greet(name: str) -> str:
    return f"hello {name}"


gateway = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
gateway.register_functions(bp)
