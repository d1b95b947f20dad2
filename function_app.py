"""The Function App: create it and register the blueprints. Nothing else lives here."""

import azure.durable_functions as df
import azure.functions as func

from orchestrators import health_api

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(health_api.bp)
