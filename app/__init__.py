"""jobq API service."""
