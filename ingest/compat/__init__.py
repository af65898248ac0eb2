"""Private internals of ingest's libraries, one module per library (see `infra.core.internals`)."""
