"""The core: models, errors, ports, FHIR validation, diff and merge, policy. Imports nothing else of shared."""
