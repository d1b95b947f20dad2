"""Start and stop the local services the gateway needs, on loopback ports."""
