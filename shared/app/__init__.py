"""The use cases: intake, journal, pipeline, writer, approvals, operations, maintenance. Imports only the core."""
