"""The task catalogue: task definitions workers publish to PostgreSQL, read by the API."""
