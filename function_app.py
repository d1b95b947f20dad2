"""The Function App: configure telemetry, create the app, register the blueprints. Nothing else lives here."""

import azure.durable_functions as df
import azure.functions as func

from activities import expire_change, fail_change, notify_approvers, prepare_change, write_change
from orchestrators import (
    approvals_api,
    changes_api,
    dispatcher,
    health_api,
    maintenance,
    openapi_api,
    operations_api,
    review_page,
    writeback_orchestrator,
)
from shared.bootstrap import configure_telemetry

# Before any function runs, and in the app rather than in the Python worker: the app's pipeline redacts first.
configure_telemetry()
app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (
    health_api.bp,
    changes_api.bp,
    approvals_api.bp,
    review_page.bp,
    operations_api.bp,
    openapi_api.bp,
    dispatcher.bp,
    writeback_orchestrator.bp,
    maintenance.bp,
    prepare_change.bp,
    write_change.bp,
    expire_change.bp,
    fail_change.bp,
    notify_approvers.bp,
):
    app.register_functions(blueprint)
