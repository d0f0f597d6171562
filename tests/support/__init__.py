"""Shared test helpers (network namespaces, tools)."""
