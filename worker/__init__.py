"""The jobq worker: consumer, executor and completer around SQS and PostgreSQL."""
