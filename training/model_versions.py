"""Mirror of registry versions in ClickHouse `model_versions` (I/O only)."""

from __future__ import annotations

import json
from pathlib import Path

from clickhouse_driver import Client

from infra.core.model_registry import ModelManifest


def version_row(manifest: ModelManifest, path: Path) -> tuple[str, str, object, str, str, str]:
    """The `model_versions` row of a version (created_at naive UTC, as ClickHouse DateTime takes it)."""
    created = manifest.created_at.replace(tzinfo=None, microsecond=0)
    return (manifest.kind, manifest.version, created, manifest.data_fingerprint,
            json.dumps(manifest.metrics, sort_keys=True), str(path))


def record_version(client: Client, database: str, manifest: ModelManifest, path: Path) -> None:
    client.execute(
        f"INSERT INTO {database}.model_versions (kind, version, created_at, data_fingerprint, metrics, path) VALUES",
        [version_row(manifest, path)],
    )
