"""Real adapters of the ports in ``shared.core.ports``: Azure Table/Blob Storage, Service Bus, FHIR over HTTP."""
