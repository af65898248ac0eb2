"""Private internals of the stream worker's libraries, one module per library (see `infra.core.internals`)."""
