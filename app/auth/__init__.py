"""API keys: hashed at rest, compared in constant time, scoped read-only or submit."""
