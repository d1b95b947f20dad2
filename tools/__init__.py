"""Local development and test tooling: the local services (Azurite, FHIR server, token endpoint)."""
