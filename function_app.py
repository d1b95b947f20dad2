"""The Function App: create it and register the blueprints. Nothing else lives here."""

import azure.durable_functions as df
import azure.functions as func

from activities import expire_change, fail_change, prepare_change, write_change
from orchestrators import changes_api, dispatcher, health_api, maintenance, writeback_orchestrator

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (
    health_api.bp,
    changes_api.bp,
    dispatcher.bp,
    writeback_orchestrator.bp,
    maintenance.bp,
    prepare_change.bp,
    write_change.bp,
    expire_change.bp,
    fail_change.bp,
):
    app.register_functions(blueprint)
