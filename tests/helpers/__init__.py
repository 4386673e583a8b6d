"""Helpers shared by tests: generators of synthetic experiment directories."""
