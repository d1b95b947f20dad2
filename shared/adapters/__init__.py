"""Real adapters of the ports in ``shared.ports``: Azure Table/Blob Storage, Service Bus, FHIR over HTTP."""
