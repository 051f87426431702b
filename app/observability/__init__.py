"""Metrics, request tracking and operational statistics."""
