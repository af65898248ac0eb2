from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from infra.core.model_registry import ModelManifest
from training.clickhouse_source import minutes_to_series
from training.model_versions import version_row


def test_short_holes_are_quiet_long_holes_missing() -> None:
    t0 = 1_700_000_040
    rows = [(t0, 120), (t0 + 60, 60), (t0 + 4 * 60, 30), (t0 + 20 * 60, 600)]
    series = minutes_to_series(rows, max_quiet_min=5)
    assert series.start_unix_s == t0
    assert len(series) == 21
    assert series.values[0] == 2.0 and series.values[1] == 1.0 and series.values[4] == 0.5
    assert series.values[2] == 0.0 and series.values[3] == 0.0  # a 2-minute hole: no windows = no requests
    assert np.isnan(series.values[5:20]).all()  # a 15-minute hole: the pipeline was away
    assert series.values[20] == 10.0
    assert series.minute_of_index(60 * 20) == 20


def test_no_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="no feature windows"):
        minutes_to_series([])


def test_version_row_carries_the_manifest() -> None:
    manifest = ModelManifest(kind="forecast", version="20261129T000000Z-abcd1234", name="mlp-quantile",
                             created_at=datetime(2026, 11, 29, 0, 0, 0, 123456, tzinfo=UTC),
                             data_fingerprint="f" * 16, metrics={"b": 1, "a": 2})
    row = version_row(manifest, Path("/x/models/forecast/v"))
    assert row == ("forecast", manifest.version, datetime(2026, 11, 29), "f" * 16, '{"a": 2, "b": 1}',
                   "/x/models/forecast/v")
