"""Request-rate series at 1-minute steps, from per-second trace files.

A trace file holds one integer (requests in that second) per second, separated by white space,
plain or compressed (.bz2, .gz). Two things a file cannot say by itself are described by a
`TraceLayout`: where its seconds sit in real time (a start, and splices where real time jumps
forward) and which stretches are missing data rather than quiet ones. Missing minutes are NaN
everywhere downstream, so no model learns an outage as a lull.
"""

from __future__ import annotations

import bz2
import gzip
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

STEP_S = 60
NASA_RPS_NAME = "nasa-http-1995-rps"
# Long runs of zero seconds are taken as an outage of the logging, not as silence: one hour with
# not a single request is not how a live service behaves. 0 turns the heuristic off.
DEFAULT_ZERO_RUN_MISSING_S = 3600


class Splice(BaseModel):
    """From second `index` of the file on, real time continues at `unix_s`."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    unix_s: float


class MissingRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    length: int = Field(gt=0)


class TraceLayout(BaseModel):
    """Where a per-second trace sits in time and which parts of it are not data."""

    model_config = ConfigDict(extra="forbid")

    start_unix_s: float | None = Field(None, description="Real time of value 0; None = unknown.")
    splices: list[Splice] = Field(default_factory=list)
    missing: list[MissingRange] = Field(default_factory=list)
    zero_run_missing_s: int = Field(DEFAULT_ZERO_RUN_MISSING_S, ge=0)


def nasa_layout() -> TraceLayout:
    """The NASA 1995 trace (see the datasets README): July and August spliced, a hurricane outage."""
    start = datetime.fromisoformat("1995-07-01T00:00:01-04:00").timestamp()
    august = datetime.fromisoformat("1995-08-01T00:00:01-04:00").timestamp()
    return TraceLayout(
        start_unix_s=start,
        splices=[Splice(index=2_381_545, unix_s=august)],
        missing=[MissingRange(index=2_435_065, length=135_851)],
    )


def layout_for(path: Path, start_unix_s: float | None = None) -> TraceLayout:
    """The NASA layout for the NASA file (unless a start is given), else a plain one."""
    if start_unix_s is None and path.name.startswith(NASA_RPS_NAME):
        return nasa_layout()
    return TraceLayout(start_unix_s=start_unix_s)


@dataclass(frozen=True)
class RateSeries:
    """Requests per second averaged per minute; NaN = missing. `second_index[i]` maps minute i
    back to the trace (the file index of its first second, -1 when it has none), so ranges given
    as file indices land on the right minute."""

    values: np.ndarray
    start_unix_s: float | None
    second_index: np.ndarray
    n_seconds: int

    def __len__(self) -> int:
        return len(self.values)

    def minute_of_index(self, index: int) -> int:
        """The first minute whose seconds start at or after file second `index`."""
        valid = np.where(self.second_index >= index)[0]
        return int(valid[0]) if len(valid) else len(self.values)

    def unix_of(self, minute: np.ndarray) -> np.ndarray:
        """Unix time of the start of each minute (NaN when the series has no timestamps)."""
        if self.start_unix_s is None:
            return np.full(np.shape(minute), np.nan)
        return self.start_unix_s + np.asarray(minute, dtype=np.float64) * STEP_S


def read_rps(path: Path) -> np.ndarray:
    """The per-second counts of a trace file (plain, .bz2 or .gz)."""
    if path.suffix == ".bz2":
        data = bz2.decompress(path.read_bytes())
    elif path.suffix == ".gz":
        data = gzip.decompress(path.read_bytes())
    else:
        data = path.read_bytes()
    values = np.array(data.split(), dtype=np.float64)
    if len(values) == 0:
        raise ValueError(f"{path} holds no values")
    if np.any(values < 0):
        raise ValueError(f"{path} holds negative request counts")
    return values


def zero_runs(values: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, length) of every run of exact zeros at least `min_len` long."""
    if min_len <= 0 or len(values) == 0:
        return []
    is_zero = np.concatenate([[False], values == 0, [False]])
    edges = np.flatnonzero(np.diff(is_zero.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True) if e - s >= min_len]


def seconds_to_minutes(rps: np.ndarray, layout: TraceLayout) -> RateSeries:
    """Place each second in real time, mark missing ones, and average per wall-clock minute.

    With a known start, minutes are aligned to the clock (so calendar features mean something)
    and the time skipped by a splice becomes missing minutes; without one, minute i is seconds
    60 i .. 60 i + 59 of the file.
    """
    n = len(rps)
    present = np.ones(n, dtype=bool)
    for gap in layout.missing:
        present[gap.index : gap.index + gap.length] = False
    for start, length in zero_runs(rps, layout.zero_run_missing_s):
        present[start : start + length] = False

    offset = np.arange(n, dtype=np.float64)  # seconds since the series origin
    origin = 0.0
    if layout.start_unix_s is not None:
        origin = np.floor(layout.start_unix_s / STEP_S) * STEP_S
        offset += layout.start_unix_s - origin
        for splice in sorted(layout.splices, key=lambda s: s.index):
            offset[splice.index :] = splice.unix_s - origin + np.arange(n - splice.index)
    minute = (offset // STEP_S).astype(np.int64)
    if np.any(np.diff(minute) < 0):
        raise ValueError("trace layout moves time backwards")
    n_min = int(minute[-1]) + 1
    sums = np.bincount(minute[present], weights=rps[present], minlength=n_min)
    counts = np.bincount(minute[present], minlength=n_min)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    first = np.full(n_min, -1, dtype=np.int64)
    first_sec = np.flatnonzero(np.concatenate([[True], np.diff(minute) > 0]))
    first[minute[first_sec]] = first_sec
    return RateSeries(values=values, start_unix_s=origin if layout.start_unix_s is not None else None,
                      second_index=first, n_seconds=n)


def load_trace(path: Path, start_unix_s: float | None = None, layout: TraceLayout | None = None) -> RateSeries:
    return seconds_to_minutes(read_rps(path), layout or layout_for(path, start_unix_s))
