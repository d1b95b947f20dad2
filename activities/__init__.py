"""Durable activities: one thin module per activity (parse input, call a service in ``shared``, return JSON)."""
