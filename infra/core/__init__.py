"""The foundation every stage builds on: settings, clients, ports and the shared contracts.

It imports no stage and nothing of the composition root (the rest of `infra/`); the import
contracts in `pyproject.toml` keep it so.
"""
