"""Adapters that run sctrace inside other tools (each needs its own extra; importing this package needs none)."""
