"""The jobs domain: models, schemas, states, storage and the service."""
