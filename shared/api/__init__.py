"""The HTTP face: requests, responses, problem+json, status view, OpenAPI, caller identity.

Imports the use cases and the core."""
