"""Benchmarks that wire several stages together (`foresight bench ...`); part of the composition root."""
