"""Faithful in-memory fakes of the ports in ``shared.core.ports``, for fast unit tests."""
