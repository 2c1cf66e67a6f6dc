"""Typed events on one cross-CPU timeline, and what a replay of the rings makes of them."""
