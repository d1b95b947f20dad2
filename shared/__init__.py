"""The gateway's core: models, validation, policy, storage and FHIR ports. No Azure Functions imports here."""
