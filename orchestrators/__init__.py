"""Durable orchestrators and the durable-client / HTTP functions (intake, status, dispatcher, approvals)."""
