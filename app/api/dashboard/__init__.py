"""Server-rendered operations dashboard (no front-end build step)."""
