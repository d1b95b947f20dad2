"""The local Durable Functions engine: SQLite history, replay through the real SDK, the client HTTP API."""
