"""Replica scalers behind one interface (`current()`, `scale(n)`): the local pool, Ray Serve, Kubernetes."""
