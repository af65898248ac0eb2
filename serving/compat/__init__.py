"""Private internals of Ray Serve that serving relies on (see `infra.core.internals`)."""
