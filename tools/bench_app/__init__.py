"""Benchmarks and the small apps they drive."""
