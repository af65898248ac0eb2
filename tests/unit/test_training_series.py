import bz2
import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from infra.core.datasets import NASA_RPS, dataset_path
from training.series import MissingRange, Splice, TraceLayout, load_trace, read_rps, seconds_to_minutes, zero_runs
from training.splits import split_by_index


def test_read_rps_reads_plain_bz2_and_gz_alike(tmp_path: Path) -> None:
    text = b"1 2 3\n4 0 5"
    (tmp_path / "t.txt").write_bytes(text)
    (tmp_path / "t.txt.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(text))
    for name in ("t.txt", "t.txt.bz2", "t.txt.gz"):
        assert read_rps(tmp_path / name).tolist() == [1, 2, 3, 4, 0, 5]


def test_read_rps_rejects_negative_counts(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("1 -2 3")
    with pytest.raises(ValueError, match="negative"):
        read_rps(tmp_path / "t.txt")


def test_minutes_without_timestamps_are_file_order_means() -> None:
    rps = np.concatenate([np.full(60, 2.0), np.full(60, 4.0), np.full(30, 6.0)])
    series = seconds_to_minutes(rps, TraceLayout(zero_run_missing_s=0))
    assert series.values.tolist() == [2.0, 4.0, 6.0]
    assert series.start_unix_s is None
    assert np.isnan(series.unix_of(np.array([1]))).all()


def test_missing_seconds_become_nan_minutes_not_zero() -> None:
    rps = np.full(300, 3.0)
    rps[60:180] = 0
    series = seconds_to_minutes(rps, TraceLayout(missing=[MissingRange(index=60, length=120)], zero_run_missing_s=0))
    assert series.values[0] == 3.0 and series.values[3] == 3.0
    assert np.isnan(series.values[1]) and np.isnan(series.values[2])


def test_long_zero_runs_are_missing_short_ones_quiet() -> None:
    rps = np.ones(600)
    rps[100:110] = 0
    rps[300:500] = 0
    assert zero_runs(rps, 100) == [(300, 200)]
    series = seconds_to_minutes(rps, TraceLayout(zero_run_missing_s=100))
    assert series.values[1] == pytest.approx(50 / 60)  # seconds 60..119 hold ten quiet zeros
    assert np.isnan(series.values[6])  # seconds 360..419 lie inside the long run


def test_splice_leaves_a_gap_of_missing_minutes_and_keeps_clock_alignment() -> None:
    start = datetime(2020, 1, 1, 0, 0, 30, tzinfo=UTC).timestamp()
    rps = np.full(240, 1.0)
    layout = TraceLayout(start_unix_s=start, splices=[Splice(index=120, unix_s=start + 600)], zero_run_missing_s=0)
    series = seconds_to_minutes(rps, layout)
    assert series.start_unix_s == datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    # seconds 0..119 cover minutes 0..2 (starting half a minute in), the splice resumes at 00:10:30.
    assert np.isfinite(series.values[:3]).all()
    assert np.isnan(series.values[3:10]).all()
    assert np.isfinite(series.values[10:]).all()
    assert series.minute_of_index(120) == 10  # the minute the spliced second falls in (00:10)


def test_nasa_trace_layout_matches_the_dataset_readme() -> None:
    series = load_trace(dataset_path(NASA_RPS))
    august = series.minute_of_index(2_381_545)
    when = datetime.fromtimestamp(float(series.unix_of(np.array(august))), UTC)
    assert when == datetime(1995, 8, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    outage_start = series.minute_of_index(2_435_065)
    assert np.isnan(series.values[outage_start : outage_start + 135_851 // 60 - 1]).all()
    july_end = august - 1
    assert np.isnan(series.values[july_end]) and np.isfinite(series.values[july_end - 4000 - 1440])
    splits = split_by_index(series, test_from=3_677_544)
    assert datetime.fromtimestamp(float(series.unix_of(np.array(splits.test_start))), UTC) == datetime(
        1995, 8, 16, 4, 0, tzinfo=UTC)
    assert 0 < splits.val_start < splits.test_start < splits.end == len(series)
