"""The local runtime: runs ``function_app.py`` unchanged without the Azure Functions host (see README)."""
