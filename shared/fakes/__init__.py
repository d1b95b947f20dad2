"""Faithful in-memory fakes of the ports in ``shared.ports``, for fast unit tests."""
