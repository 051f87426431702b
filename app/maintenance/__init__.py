"""Periodic maintenance services (retention pruning, and later the reconciler and scheduler)."""
